package vswitch

import (
	"sync"
	"testing"
)

func TestFDB(t *testing.T) {
	const age = 100
	p1, p2, gone := &Port{name: "p1"}, &Port{name: "p2"}, &Port{name: "gone"}
	gone.removed.Store(true)
	for _, tc := range []struct {
		name string
		run  func(f *fdb) (got *Port, want *Port)
	}{
		{"unknown", func(f *fdb) (*Port, *Port) { return f.lookup(1, 0, age), nil }},
		{"learned", func(f *fdb) (*Port, *Port) { f.learn(1, p1, 0, age); return f.lookup(1, 50, age), p1 }},
		{"aged out", func(f *fdb) (*Port, *Port) { f.learn(1, p1, 0, age); return f.lookup(1, 101, age), nil }},
		{"refreshed", func(f *fdb) (*Port, *Port) {
			f.learn(1, p1, 0, age)
			f.learn(1, p1, int64(2e9), int64(3e9)) // older than refreshEvery: rewritten
			return f.lookup(1, int64(4e9), int64(3e9)), p1
		}},
		{"moved", func(f *fdb) (*Port, *Port) {
			f.learn(1, p1, 0, age)
			f.learn(1, p2, 1, age)
			return f.lookup(1, 2, age), p2
		}},
		{"static never ages", func(f *fdb) (*Port, *Port) { f.addStatic(1, p1); return f.lookup(1, 1<<60, age), p1 }},
		{"static does not move", func(f *fdb) (*Port, *Port) {
			f.addStatic(1, p1)
			f.learn(1, p2, 5, age)
			return f.lookup(1, 6, age), p1
		}},
		{"removed port", func(f *fdb) (*Port, *Port) { f.learn(1, gone, 0, age); return f.lookup(1, 1, age), nil }},
		{"forget", func(f *fdb) (*Port, *Port) { f.learn(1, p1, 0, age); f.forget(p1); return f.lookup(1, 1, age), nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := tc.run(newFDB(64)); got != want {
				t.Errorf("lookup = %v, want %v", got, want)
			}
		})
	}
}

// TestFDBFull fills a tiny table far beyond its size: the newest entries
// win (the oldest in a probe window is evicted) and nothing breaks.
func TestFDBFull(t *testing.T) {
	f := newFDB(fdbProbe)
	p := &Port{}
	for mac := uint64(1); mac <= 100; mac++ {
		f.learn(mac, p, int64(mac), 1<<40)
	}
	if f.lookup(100, 101, 1<<40) != p {
		t.Error("the newest address was not learned")
	}
	if n := f.count(101, 1<<40); n != fdbProbe {
		t.Errorf("%d entries in a table of %d", n, fdbProbe)
	}
}

// TestFDBConcurrent races lookups against learning and moves (run with
// -race): a lookup must never return a port the address was never on.
func TestFDBConcurrent(t *testing.T) {
	f := newFDB(256)
	ports := []*Port{{name: "a"}, {name: "b"}}
	other := &Port{name: "other"}
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				f.learn(uint64(i%512)<<1, ports[(i/512+w)%2], int64(i)*int64(2e9), 1<<62)
				f.learn(uint64(i%512)<<1|1, other, int64(i), 1<<62)
			}
		}()
	}
	for i := 0; i < 40000; i++ {
		if p := f.lookup(uint64(i%512)<<1, int64(i), 1<<62); p == other {
			t.Fatalf("address %d resolved to another address's port", i%512)
		}
	}
	wg.Wait()
}
