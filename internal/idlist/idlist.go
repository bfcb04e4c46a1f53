// Package idlist reads the lists of numbers the kernel and the
// configuration write as ranges: "0-3,5,8-9" (CPUs, NUMA nodes, vCPUs).
package idlist

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse returns the members of s in order, each at least 0 and below
// limit. A field may have spaces around it; an empty list, a field that is
// not a number or a range, or a range that runs backwards is an error.
func Parse(s string, limit int) ([]int, error) {
	var ids []int
	for _, f := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("%q: not a number or range", f)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("%q: not a number or range", f)
			}
		}
		if b >= limit {
			return nil, fmt.Errorf("%q: past %d", f, limit-1)
		}
		for i := a; i <= b; i++ {
			ids = append(ids, i)
		}
	}
	return ids, nil
}
