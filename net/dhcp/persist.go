package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/hyperroot/hyperroot/internal/atomicfile"
	"github.com/hyperroot/hyperroot/internal/safeopen"
)

// leaseFile is the on-disk form of the table. Only bound leases are kept:
// an OFFER that was never ACKed is not worth a disk write.
type leaseFile struct {
	Version int         `json:"version"`
	Leases  []fileLease `json:"leases"`
}

type fileLease struct {
	// Key is the client identity as raw bytes, "hw:" and the hardware
	// address (older files may hold "id:" and a client identifier); JSON
	// carries it base64-encoded.
	Key      []byte    `json:"key"`
	MAC      string    `json:"mac,omitempty"`
	IP       string    `json:"ip"`
	Hostname string    `json:"hostname,omitempty"`
	Expiry   time.Time `json:"expiry"`
}

const leaseFileVersion = 1

// MaxLeaseFile bounds what ReadLeases (and any other reader of a lease
// file, such as PID 1 keeping it on the data disk) reads: a /16 pool's leases take
// under 10 MiB.
const MaxLeaseFile = 16 << 20

// ReadLeases reads the lease file a Server writes (Config.LeasePath), for
// a reader outside the server, such as the appliance's API: the bound
// leases, expired ones included (the caller has the clock). A missing file
// is no leases. The file is the server's, which may run in a jail a guest
// has taken: its size is bounded and every entry checked.
func ReadLeases(path string) ([]Lease, error) {
	data, err := ReadLeaseFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var lf leaseFile
	if err := json.Unmarshal(data, &lf); err != nil || lf.Version != leaseFileVersion {
		return nil, fmt.Errorf("%s: not a lease file of version %d (%v)", path, leaseFileVersion, err)
	}
	var out []Lease
	for _, fl := range lf.Leases {
		ip, err1 := netip.ParseAddr(fl.IP)
		mac, err2 := net.ParseMAC(fl.MAC)
		if err1 != nil || err2 != nil || len(mac) != 6 || len(fl.Hostname) > 255 {
			continue
		}
		out = append(out, Lease{IP: ip, MAC: mac, Hostname: fl.Hostname, Expiry: fl.Expiry})
	}
	return out, nil
}

// ReadLeaseFile reads a lease file's bytes as a reader outside the server
// must: the file is written by a switch that may be a guest's, which could
// have put a symbolic link to one of the appliance's files in its place
// (no link is followed, anywhere in the path), or a FIFO to block the
// reader on (opened without waiting; only a regular file is read), or a
// file too big to hold (MaxLeaseFile).
func ReadLeaseFile(path string) ([]byte, error) {
	f, err := safeopen.Open(path, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxLeaseFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxLeaseFile {
		return nil, fmt.Errorf("%s: over %d bytes", path, MaxLeaseFile)
	}
	return data, nil
}

// load reads the lease file. A missing file is an empty table. A file that
// cannot be parsed is moved aside (.corrupt) rather than failing the whole
// network: losing the table only costs address stability. Leases outside
// the (possibly reconfigured) pool are dropped.
func (s *Server) load() error {
	data, err := os.ReadFile(s.cfg.LeasePath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read leases: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != leaseFileVersion {
		bad := s.cfg.LeasePath + ".corrupt"
		s.cfg.Log.Warn("dhcp: unreadable lease file moved aside, starting empty",
			"path", s.cfg.LeasePath, "moved_to", bad, "err", err, "version", f.Version)
		if err := os.Rename(s.cfg.LeasePath, bad); err != nil {
			return fmt.Errorf("move aside corrupt leases: %w", err)
		}
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fl := range f.Leases {
		ip, err := netip.ParseAddr(fl.IP)
		if err != nil || !s.inPool(ip) || s.byIP[ip] != nil {
			continue
		}
		// A lease belongs to a hardware address (see the package
		// comment). Files written before that keyed some leases by
		// client identifier ("id:..."): their mac field names the
		// client. Of two leases for one MAC the later one wins.
		var mac net.HardwareAddr
		switch {
		case fl.MAC != "":
			if mac, err = net.ParseMAC(fl.MAC); err != nil {
				continue
			}
		case len(fl.Key) == 3+6 && string(fl.Key[:3]) == "hw:":
			mac = net.HardwareAddr(fl.Key[3:])
		}
		if len(mac) != 6 {
			continue
		}
		if old := s.byMAC[string(mac)]; old != nil {
			if !old.expiry.Before(fl.Expiry) {
				continue
			}
			s.remove(old)
		}
		e := &entry{key: string(mac), mac: mac, ip: ip, hostname: fl.Hostname, expiry: fl.Expiry, saved: fl.Expiry, bound: true}
		s.byMAC[e.key] = e
		s.byIP[ip] = e
		s.pool.schedule(e)
	}
	return nil
}

// persist writes the bound leases to LeasePath atomically: a temp file in
// the same directory, fsynced, renamed over the old one. Failures are
// logged, not returned: the lease is already granted in memory and the
// client must get its answer.
func (s *Server) persist() {
	if s.cfg.LeasePath == "" {
		return
	}
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	f := leaseFile{Version: leaseFileVersion, Leases: []fileLease{}}
	for _, e := range s.sortedEntries() {
		if !e.bound {
			continue
		}
		e.saved = e.expiry
		fl := fileLease{Key: []byte("hw:" + e.key), IP: e.ip.String(), Hostname: e.hostname, Expiry: e.expiry.UTC()}
		if len(e.mac) > 0 {
			fl.MAC = e.mac.String()
		}
		f.Leases = append(f.Leases, fl)
	}
	s.mu.Unlock()
	if err := writeAtomic(s.cfg.LeasePath, f); err != nil {
		s.cfg.Log.Error("dhcp: persist leases", "path", s.cfg.LeasePath, "err", err)
	}
}

func writeAtomic(path string, f leaseFile) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode leases: %w", err)
	}
	return atomicfile.Write(path, append(data, '\n'), 0o600)
}

// sortedEntries returns the table ordered by address, for stable output.
// Called with mu held.
func (s *Server) sortedEntries() []*entry {
	out := make([]*entry, 0, len(s.byIP))
	for _, e := range s.byIP {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *entry) int { return a.ip.Compare(b.ip) })
	return out
}
