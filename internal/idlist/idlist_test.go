package idlist

import (
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	for in, want := range map[string][]int{"0": {0}, "0-2": {0, 1, 2}, "0,2-3": {0, 2, 3}, " 1 , 4-5": {1, 4, 5}} {
		if got, err := Parse(in, 8); err != nil || !slices.Equal(got, want) {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "3-1", "-1", "0-8", "8", "1,,2", "1-"} {
		if got, err := Parse(bad, 8); err == nil {
			t.Errorf("Parse(%q) = %v, accepted", bad, got)
		}
	}
}
