// Package cliflag holds the flag.Value types hyperroot's commands share, so
// that each command's flags parse alike and the types exist once.
package cliflag

import "strings"

// Strings collects a repeatable string flag (--disk a --disk b) in the
// order given. Values are checked after flag parsing by their users, so
// that a bad one is reported in one line rather than with the whole usage
// text.
type Strings []string

// String joins the values with spaces (flag.Value).
func (s *Strings) String() string { return strings.Join(*s, " ") }

// Set appends one value (flag.Value).
func (s *Strings) Set(v string) error { *s = append(*s, v); return nil }
