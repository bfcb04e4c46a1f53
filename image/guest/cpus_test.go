package main

import "testing"

func TestCountRanges(t *testing.T) {
	for _, c := range []struct {
		in string
		n  int
		ok bool
	}{
		{"0", 1, true}, {"0-63", 64, true}, {"0-3,5,8-9", 7, true},
		{"", 0, false}, {"3-1", 0, false}, {"0-x", 0, false}, {"a", 0, false},
	} {
		n, ok := countRanges(c.in)
		if n != c.n || ok != c.ok {
			t.Errorf("countRanges(%q) = %d, %v; want %d, %v", c.in, n, ok, c.n, c.ok)
		}
	}
}
