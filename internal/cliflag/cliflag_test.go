package cliflag

import (
	"flag"
	"io"
	"slices"
	"testing"
)

func TestStrings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, nil},
		{[]string{"--x", "a"}, []string{"a"}},
		{[]string{"--x", "a", "--x=b,c", "--x", ""}, []string{"a", "b,c", ""}},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var s Strings
		fs.Var(&s, "x", "repeatable")
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if !slices.Equal(s, tc.want) {
			t.Errorf("%q: got %q, want %q", tc.args, s, tc.want)
		}
	}
}
