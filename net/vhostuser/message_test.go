package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

func TestParseHeader(t *testing.T) {
	hdr := func(req, flags, size uint32) []byte {
		b := make([]byte, HeaderSize)
		Header{Request(req), flags, size}.put(b)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want Header
		ok   bool
	}{
		{"request", hdr(1, 1, 0), Header{GetFeatures, 1, 0}, true},
		{"reply with payload", hdr(11, 1|FlagReply, 8), Header{GetVringBase, 5, 8}, true},
		{"largest payload", hdr(5, 1|FlagNeedReply, MaxPayload), Header{SetMemTable, 9, MaxPayload}, true},
		{"short", hdr(1, 1, 0)[:11], Header{}, false},
		{"version 0", hdr(1, 0, 0), Header{}, false},
		{"version 2", hdr(1, 2, 0), Header{}, false},
		{"oversize", hdr(1, 1, MaxPayload+1), Header{}, false},
		{"huge", hdr(1, 1, 0xffffffff), Header{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHeader(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseHeader = %+v, %v; want ok=%v", h, err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("error %v does not wrap ErrProtocol", err)
				}
				return
			}
			if h != tt.want {
				t.Fatalf("ParseHeader = %+v, want %+v", h, tt.want)
			}
		})
	}
}

func TestParsePayloads(t *testing.T) {
	regions := []Region{
		{GuestAddr: 0, Size: 0xa0000, UserAddr: 0x7f0000000000, Offset: 0, Fd: -1},
		{GuestAddr: 0x100000000, Size: 1 << 30, UserAddr: 0x7f0040000000, Offset: 0xc0000000, Fd: -1},
	}
	tests := []struct {
		name  string
		parse func([]byte) (any, error)
		in    []byte
		want  any // nil: must fail
	}{
		{"u64", wrap(ParseU64), appendU64(nil, 1<<32|5), uint64(1<<32 | 5)},
		{"u64 short", wrap(ParseU64), []byte{1, 2, 3}, nil},
		{"u64 long", wrap(ParseU64), make([]byte, 9), nil},
		{"vring state", wrap(ParseVringState), VringState{1, 256}.append(nil), VringState{1, 256}},
		{"vring state short", wrap(ParseVringState), make([]byte, 4), nil},
		{"vring addr", wrap(ParseVringAddr), VringAddr{1, 0, 0x1000, 0x3000, 0x2000, 0}.append(nil),
			VringAddr{Index: 1, Desc: 0x1000, Used: 0x3000, Avail: 0x2000}},
		{"vring addr short", wrap(ParseVringAddr), make([]byte, 39), nil},
		{"mem table", wrap(ParseMemTable), appendMemTable(nil, regions), regions},
		{"mem table empty", wrap(ParseMemTable), appendMemTable(nil, nil), nil},
		{"mem table nine", wrap(ParseMemTable), appendMemTable(nil, make([]Region, 9)), nil},
		{"mem table count lies", wrap(ParseMemTable), appendMemTable(nil, regions)[:8+32], nil},
		{"mem table trailing bytes", wrap(ParseMemTable), append(appendMemTable(nil, regions), 0), nil},
		{"mem table no header", wrap(ParseMemTable), []byte{1, 0, 0}, nil},
		{"config", wrap(ParseConfig), Config{Offset: 4, Flags: 1, Data: []byte{1, 2}}.append(nil),
			Config{Offset: 4, Flags: 1, Data: []byte{1, 2}}},
		{"config size lies", wrap(ParseConfig), Config{Data: []byte{1, 2}}.append(nil)[:13], nil},
		{"config too large", wrap(ParseConfig), Config{Data: make([]byte, MaxConfigSize+1)}.append(nil), nil},
		{"config short", wrap(ParseConfig), make([]byte, 11), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.parse(tt.in)
			if tt.want == nil {
				if err == nil || !errors.Is(err, ErrProtocol) {
					t.Fatalf("parse = %+v, %v; want an ErrProtocol", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parse = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func wrap[T any](f func([]byte) (T, error)) func([]byte) (any, error) {
	return func(b []byte) (any, error) { return f(b) }
}

func TestParseVringFD(t *testing.T) {
	tests := []struct {
		in    uint64
		index uint32
		noFD  bool
		ok    bool
	}{
		{0, 0, false, true},
		{1, 1, false, true},
		{255, 255, false, true},
		{0x100 | 3, 3, true, true},
		{0x200, 0, false, false},
		{1 << 63, 0, false, false},
	}
	for _, tt := range tests {
		index, noFD, err := ParseVringFD(appendU64(nil, tt.in))
		if (err == nil) != tt.ok || index != tt.index || noFD != tt.noFD {
			t.Errorf("ParseVringFD(%#x) = %d, %v, %v; want %d, %v, ok=%v", tt.in, index, noFD, err, tt.index, tt.noFD, tt.ok)
		}
		if tt.ok && vringFD(index, noFD) != tt.in {
			t.Errorf("vringFD(%d, %v) = %#x, want %#x", index, noFD, vringFD(index, noFD), tt.in)
		}
	}
}

func TestRequestString(t *testing.T) {
	for r, want := range map[Request]string{GetFeatures: "GET_FEATURES", GetStatus: "GET_STATUS", 26: "request(26)", 1 << 31: "request(2147483648)"} {
		if got := r.String(); got != want {
			t.Errorf("Request(%d).String() = %q, want %q", uint32(r), got, want)
		}
	}
}

// reencode is the inverse of the payload parsers, for the fuzz round trip.
func reencode(req Request, p []byte) (out []byte, parsed bool) {
	switch req {
	case GetFeatures, SetFeatures, GetProtocolFeatures, SetProtocolFeatures, GetQueueNum:
		v, err := ParseU64(p)
		return appendU64(nil, v), err == nil
	case SetVringNum, SetVringBase, GetVringBase, SetVringEnable:
		s, err := ParseVringState(p)
		return s.append(nil), err == nil
	case SetVringAddr:
		a, err := ParseVringAddr(p)
		return a.append(nil), err == nil
	case SetMemTable:
		r, err := ParseMemTable(p)
		return appendMemTable(nil, r), err == nil
	case GetConfig, SetConfig:
		c, err := ParseConfig(p)
		return c.append(nil), err == nil
	case SetVringKick, SetVringCall, SetVringErr:
		i, noFD, err := ParseVringFD(p)
		return appendU64(nil, vringFD(i, noFD)), err == nil
	}
	return nil, false
}

// FuzzParse feeds arbitrary bytes to the header and payload parsers: they
// must not panic, and whatever they accept must encode back to the same
// bytes (the memory table's padding word aside).
func FuzzParse(f *testing.F) {
	for _, s := range seedMessages() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		// Whether the header is acceptable, decided from the raw bytes
		// independently of ParseHeader: long enough, version 1, a
		// payload within the limit.
		want := len(b) >= HeaderSize && binary.LittleEndian.Uint32(b[4:])&FlagVersionMask == Version &&
			binary.LittleEndian.Uint32(b[8:]) <= MaxPayload
		if (err == nil) != want {
			t.Fatalf("ParseHeader(%x) = %+v, %v; want accepted=%v", b[:min(len(b), HeaderSize)], h, err, want)
		}
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var back [HeaderSize]byte
		h.put(back[:])
		if !bytes.Equal(back[:], b[:HeaderSize]) {
			t.Fatalf("header %x parsed as %+v, which encodes as %x", b[:HeaderSize], h, back)
		}
		p := b[HeaderSize:]
		if uint32(len(p)) > h.Size {
			p = p[:h.Size]
		}
		out, ok := reencode(h.Request, p)
		if !ok {
			return
		}
		wantP := p
		if h.Request == SetMemTable {
			wantP = append([]byte(nil), p...)
			clear(wantP[4:8])
		}
		if !bytes.Equal(out, wantP) {
			t.Fatalf("%v: payload %x re-encodes as %x", h.Request, wantP, out)
		}
	})
}

// seedMessages are well-formed messages of every payload type, the
// starting points of the fuzz targets (also committed under testdata/fuzz).
func seedMessages() [][]byte {
	msg := func(req Request, flags uint32, p []byte) []byte {
		b := make([]byte, HeaderSize, HeaderSize+len(p))
		Header{req, Version | flags, uint32(len(p))}.put(b)
		return append(b, p...)
	}
	region := Region{GuestAddr: highBase, Size: 0x1000, UserAddr: 0x7f0000100000, Offset: ramSize / 2}
	return [][]byte{
		msg(GetFeatures, 0, nil),
		msg(SetFeatures, FlagNeedReply, appendU64(nil, 1<<32|1<<29)),
		msg(SetProtocolFeatures, 0, appendU64(nil, ProtocolReplyAck|ProtocolMQ)),
		msg(SetMemTable, FlagNeedReply, appendMemTable(nil, []Region{region})),
		msg(SetVringNum, FlagNeedReply, VringState{0, 8}.append(nil)),
		msg(SetVringAddr, FlagNeedReply, VringAddr{Index: 0, Desc: 0x7f0000100000, Avail: 0x7f0000101000, Used: 0x7f0000102000}.append(nil)),
		msg(SetVringBase, 0, VringState{0, 3}.append(nil)),
		msg(SetVringEnable, FlagNeedReply, VringState{0, 1}.append(nil)),
		msg(GetVringBase, 0, VringState{0, 0}.append(nil)),
		msg(SetVringKick, 0, appendU64(nil, vringFD(0, true))),
		msg(GetConfig, 0, Config{Offset: 0, Data: make([]byte, 6)}.append(nil)),
		msg(GetQueueNum, 0, nil),
	}
}
