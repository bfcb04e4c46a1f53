package result

import (
	"math"
	"strings"
	"testing"
)

func TestLineParse(t *testing.T) {
	f := Figure{Bench: "boot", Name: "VMM start to guest init", Unit: "s", Lower: true, Ours: "hyperroot",
		Values: map[string][]float64{"hyperroot": {2.1, 1.9, 2.0}, "qemu-pc": {3.0, 3.3, 2.9}},
		Goal:   &Goal{Peer: "qemu-pc", Ratio: 0.6}}
	// As the console shows it: the job's prefix before the benchmark's line.
	got, ok := Parse("run| " + f.Line())
	if !ok || got.Name != f.Name || !got.Lower || got.Goal.Ratio != 0.6 || len(got.Values["qemu-pc"]) != 3 {
		t.Fatalf("Parse(Line) = %+v, %v", got, ok)
	}
	for _, bad := range []string{
		"run| bench: boot round=1 vmm=hyperroot time-to-init=2.1s",
		"run| bench: result {\"bench\":\"boot\",\"name\":\"x\"",                 // cut short
		"run| bench: result {\"bench\":\"boot\",\"name\":\"x\",\"ours\":\"a\"}", // no values
	} {
		if _, ok := Parse(bad); ok {
			t.Errorf("Parse(%q) ok", bad)
		}
	}
}

func TestSummary(t *testing.T) {
	f := Figure{Bench: "boot", Name: "start", Unit: "s", Lower: true, Ours: "hyperroot",
		Values: map[string][]float64{"hyperroot": {2.1, 1.9, 2.0}, "qemu-pc": {3.0, 4.0, 5.0}, "qemu-microvm": {}},
		Goal:   &Goal{Peer: "qemu-pc", Ratio: 0.6}}
	r := Summary(f)
	if st := r.Stats["hyperroot"]; st.Median != 2.0 || st.Min != 1.9 || st.Max != 2.1 || st.Rounds != 3 {
		t.Errorf("hyperroot stats %+v", st)
	}
	if got := r.Ratios["qemu-pc"]; math.Abs(got-0.5) > 1e-9 {
		t.Errorf("ratio to qemu-pc %v, want 0.5", got)
	}
	if _, ok := r.Ratios["qemu-microvm"]; ok {
		t.Error("a ratio to a peer that never finished")
	}
	if r.Met == nil || !*r.Met {
		t.Errorf("goal ≤ 0.6 with 0.5: met = %v", r.Met)
	}
	// Higher is better: 0.5 of the peer misses a goal of 1.0.
	f.Lower, f.Goal = false, &Goal{Peer: "qemu-pc", Ratio: 1.0}
	if r := Summary(f); r.Met == nil || *r.Met {
		t.Errorf("goal ≥ 1.0 with 0.5: met = %v", r.Met)
	}
	// A goal against a peer that did not run is not judged.
	f.Goal = &Goal{Peer: "gokvm", Ratio: 1.0}
	if r := Summary(f); r.Met != nil {
		t.Errorf("goal against a missing peer judged: %v", *r.Met)
	}
	// Even counts take the upper median, as the benchmarks' tables do.
	if st := Summarise([]float64{4, 1, 3, 2}); st.Median != 3 {
		t.Errorf("median of 1..4 = %v, want 3", st.Median)
	}
}

func TestReadMarkdown(t *testing.T) {
	a := Figure{Bench: "disk", Name: "4 KiB randread QD4", Unit: "IOPS", Ours: "uring",
		Values: map[string][]float64{"uring": {800, 900, 850}, "qemu": {1000, 1000, 1000}}, Goal: &Goal{Peer: "qemu", Ratio: 1}}
	b := Figure{Bench: "net", Name: "VM-to-VM TCP, 1 stream", Unit: "Mbit/s", Ours: "hyperroot",
		Values: map[string][]float64{"hyperroot": {120}, "qemu": {100}}, Goal: &Goal{Peer: "qemu", Ratio: 1.2}}
	again := a
	again.Values = map[string][]float64{"uring": {1100}, "qemu": {1000}}
	log := strings.Join([]string{"[ 1.0] hyperroot: ready", "run| " + a.Line(), "run| bench: disk round=1", "run| " + b.Line(), "run| " + again.Line()}, "\n")
	figs, err := Read(strings.NewReader(log))
	if err != nil || len(figs) != 2 || figs[0].Values["uring"][0] != 1100 {
		t.Fatalf("Read = %+v, %v; want 2 figures, the disk one replaced", figs, err)
	}
	rep := Report{Machine: "test CPU, 2 cores", Date: "2026-12-06T00:00:00Z", Commit: "abc123"}
	figs = append(figs, Figure{Bench: "fleet", Name: "power-on to init", Unit: "s", Lower: true, Ours: "hyperroot",
		Values: map[string][]float64{"hyperroot": {12, 40, 31}}})
	for _, f := range figs {
		rep.Rows = append(rep.Rows, Summary(f))
	}
	md := rep.Markdown()
	for _, want := range []string{
		"- commit: abc123",
		"| disk | 4 KiB randread QD4 | IOPS | higher | uring 1100 [1100–1100] | qemu 1000 (**1.10**) | ≥ 1.00 × qemu: met | 1/1 |",
		"| fleet | power-on to init | s | lower | 31.0 [12.0–40.0] | — | — | 3 |",
		"| net | VM-to-VM TCP, 1 stream | Mbit/s | higher | 120 [120–120] | qemu 100 (**1.20**) | ≥ 1.20 × qemu: met | 1/1 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}
