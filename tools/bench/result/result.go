// Package result is the benchmarks' common record: each figure a
// benchmark measures (tools/bench, in the appliance) is printed as one
// "bench: result {...}" console line, and `./build.sh bench` gathers those
// lines from every benchmark's log into one table (tools/benchreport):
// out/bench/results.json and results.md, with the machine, the date, the
// commit, the rounds, each contender's median and range, and hyperroot's
// ratio to each peer against the goal of the project's performance issue.
//
// The figures stay in the benchmarks' own lines too; this record is what
// a reader or a script compares across runs without parsing each
// benchmark's table.
package result

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Figure is one thing measured, every contender's value in every round.
type Figure struct {
	Bench string `json:"bench"` // boot, disk, net, debian, passthrough
	Name  string `json:"name"`  // what, e.g. "randread QD4"
	Unit  string `json:"unit"`  // s, IOPS, MiB/s, Mbit/s
	// Lower says lower is better (times, latencies); otherwise higher.
	Lower bool `json:"lower,omitempty"`
	// Ours is the contender that is hyperroot; the others are peers.
	Ours string `json:"ours"`
	// Values are each contender's figures, one per round it completed.
	Values map[string][]float64 `json:"values"`
	// Goal, when set, is the ratio Ours/Peer the project aims for: at
	// most this when Lower, at least this otherwise.
	Goal *Goal `json:"goal,omitempty"`
}

// Goal is a ratio to reach against one peer.
type Goal struct {
	Peer  string  `json:"peer"`
	Ratio float64 `json:"ratio"`
}

// prefix starts a result line; the line may carry a VM's or the console's
// prefix before it ("run| bench: result ...").
const prefix = "bench: result "

// Line is f as a console line.
func (f Figure) Line() string {
	b, err := json.Marshal(f)
	if err != nil { // a Figure always marshals; a NaN would not
		return fmt.Sprintf("bench: result-error %v", err)
	}
	return prefix + string(b)
}

// Parse reads a result line; ok is false for any other line, or one whose
// record is broken (a log cut short).
func Parse(line string) (f Figure, ok bool) {
	i := strings.Index(line, prefix)
	if i < 0 {
		return Figure{}, false
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(line[i+len(prefix):])), &f); err != nil {
		return Figure{}, false
	}
	if f.Bench == "" || f.Name == "" || f.Ours == "" || len(f.Values) == 0 {
		return Figure{}, false
	}
	return f, true
}

// Stats are one contender's figures summarised: the median (the upper
// one of an even count, as the benchmarks' own tables), the range, and
// how many rounds.
type Stats struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Rounds int     `json:"rounds"`
}

// Summarise computes vs' Stats; Rounds 0 when vs is empty.
func Summarise(vs []float64) Stats {
	if len(vs) == 0 {
		return Stats{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return Stats{Median: s[len(s)/2], Min: s[0], Max: s[len(s)-1], Rounds: len(s)}
}

// Row is a Figure summarised: each contender's Stats and the ratio of
// ours to each peer's median.
type Row struct {
	Figure
	Stats  map[string]Stats   `json:"stats"`
	Ratios map[string]float64 `json:"ratios"` // by peer: ours / peer
	// Met says whether the Goal was reached; nil without a goal or
	// without both medians.
	Met *bool `json:"met,omitempty"`
}

// Summary summarises f.
func Summary(f Figure) Row {
	r := Row{Figure: f, Stats: map[string]Stats{}, Ratios: map[string]float64{}}
	for name, vs := range f.Values {
		r.Stats[name] = Summarise(vs)
	}
	ours := r.Stats[f.Ours].Median
	for name, st := range r.Stats {
		if name != f.Ours && st.Median > 0 && ours > 0 {
			r.Ratios[name] = ours / st.Median
		}
	}
	if f.Goal != nil {
		if ratio, ok := r.Ratios[f.Goal.Peer]; ok {
			met := ratio >= f.Goal.Ratio
			if f.Lower {
				met = ratio <= f.Goal.Ratio
			}
			r.Met = &met
		}
	}
	return r
}

// Peers are f's contenders other than ours, sorted.
func (f Figure) Peers() []string {
	var out []string
	for name := range f.Values {
		if name != f.Ours {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
