// Package procs finds processes by their command line, for the e2e tests'
// hyperroot.run jobs (tools/e2e/freeze, tools/e2e/vmkill) that act on the
// appliance's own processes from inside it.
package procs

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// Find returns the pids whose argument list (argv[0] included) match
// accepts.
func Find(match func(args []string) bool) []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		var args []string
		for _, a := range bytes.Split(bytes.TrimSuffix(b, []byte{0}), []byte{0}) {
			args = append(args, string(a))
		}
		if match(args) {
			pid, _ := strconv.Atoi(filepath.Base(d))
			out = append(out, pid)
		}
	}
	return out
}
