package result

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Report is one `./build.sh bench` run: where and when, and every figure.
type Report struct {
	Machine string `json:"machine"` // CPU model, cores, memory, kernel
	Date    string `json:"date"`    // RFC 3339, UTC
	Commit  string `json:"commit"`  // git describe of the tree measured
	Rows    []Row  `json:"rows"`
}

// Read gathers the result lines of a log, in order; a figure printed again
// (same bench and name) replaces the earlier one.
func Read(r io.Reader) ([]Figure, error) {
	var out []Figure
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f, ok := Parse(sc.Text())
		if !ok {
			continue
		}
		if i := slices.IndexFunc(out, func(g Figure) bool { return g.Bench == f.Bench && g.Name == f.Name }); i >= 0 {
			out[i] = f
			continue
		}
		out = append(out, f)
	}
	return out, sc.Err()
}

// Markdown is the report as a table: a row per figure with our median and
// range, each peer's median and our ratio to it, and the goal.
func (rep Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmark results\n\n")
	fmt.Fprintf(&b, "- machine: %s\n- date: %s\n- commit: %s\n\n", rep.Machine, rep.Date, rep.Commit)
	fmt.Fprintf(&b, "Medians of the rounds (range in brackets); a ratio is hyperroot's median over the peer's; rounds are\n"+
		"how many values each contender has, hyperroot's first (the fleet's are its VMs).\n\n")
	fmt.Fprintf(&b, "| bench | figure | unit | better | hyperroot | peers (ratio) | goal | rounds |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Rows {
		better := "higher"
		if r.Lower {
			better = "lower"
		}
		ours := r.Stats[r.Ours]
		var peers []string
		for _, p := range r.Peers() {
			st := r.Stats[p]
			if st.Rounds == 0 {
				peers = append(peers, p+" none")
				continue
			}
			s := fmt.Sprintf("%s %s", p, num(st.Median))
			if ratio, ok := r.Ratios[p]; ok {
				s += fmt.Sprintf(" (**%.2f**)", ratio)
			}
			peers = append(peers, s)
		}
		if len(peers) == 0 {
			peers = []string{"—"}
		}
		goal := "—"
		if r.Goal != nil {
			op := "≥"
			if r.Lower {
				op = "≤"
			}
			goal = fmt.Sprintf("%s %.2f × %s", op, r.Goal.Ratio, r.Goal.Peer)
			switch {
			case r.Met == nil:
				goal += ": not measured"
			case *r.Met:
				goal += ": met"
			default:
				goal += ": not met"
			}
		}
		rounds := []string{fmt.Sprint(ours.Rounds)}
		for _, p := range r.Peers() {
			rounds = append(rounds, fmt.Sprint(r.Stats[p].Rounds))
		}
		// The column is hyperroot's; a figure of another of its forms
		// (jailed) names it.
		name := ""
		if r.Ours != "hyperroot" {
			name = r.Ours + " "
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s%s [%s–%s] | %s | %s | %s |\n", r.Bench, r.Name, r.Unit, better,
			name, num(ours.Median), num(ours.Min), num(ours.Max), strings.Join(peers, "; "), goal, strings.Join(rounds, "/"))
	}
	return b.String()
}

// num prints a figure with the precision it deserves: three significant
// digits at least, no exponent.
func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}
