// Command testreport turns `go test -json` into what a person reading the
// end of a CI log needs: the usual terse go test output while it runs, then
// a summary at the very end, where a log cut to its tail still shows it.
//
//	go test -json ./... | go run ./tools/testreport [-slow 60s]
//
// While the tests run it prints what go test prints without -v: each
// package's ok/FAIL line and the output of every test that failed. When a
// package ends without a test having ended (go test's -timeout panics the
// package), the output of each test still running is printed, since that is
// the one that hung. The summary names every failed or unfinished test with
// its time and lists the tests slower than -slow, slowest first: the suite
// has a time budget (CI: 45 minutes on 2 cores) and this is where it goes.
//
// A test that waits for something other than itself before it starts (a
// slot of a test bed shared by parallel tests) says so in a line of its
// output, "testreport: waited <duration>": the summary counts its time
// without the wait, which it shows beside it, so that the slow list names
// what costs and not what queued.
//
// With -note REGEXP, the output lines of any test, passed ones included,
// that match it are repeated in the summary under the test's name: a suite
// that retries what it has shown to be its test bed's fault (tools/e2e) says
// so in a line the summary should show, since a retry can hide a bug.
//
// With -key REGEXP, the output lines of a failed or unfinished test that
// match it (its last keyLines such lines, however long its output) are
// repeated under its FAIL line at the very end: an end-to-end test's
// console runs to thousands of lines, a CI log is often read only by its
// tail, and the lines that say why (a VMM's vCPU state in a dump, an
// error) are then the last thing printed.
//
// With -times FILE, every test's time goes to FILE as well, slowest first,
// one line each: seconds, seconds waited, verdict, package, test (tab
// separated): the whole distribution, for planning where a suite's budget
// goes (tools/e2e's test bed orders its tests by such figures).
//
// Exit status: 1 when a test or package failed (or the input ended before a
// package did), else 0.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of test2json's output (go doc cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build events (build-output, build-fail)
	Test       string
	Elapsed    float64
	Output     string
}

// keepLines bounds what is kept of one test's output: an end-to-end test
// that fails prints its appliance's console, and only its end matters.
const keepLines = 400

// keyLines bounds the -key lines kept of one test: the last ones, since a
// hung test's dumps come at its end, and a CI log is read by its tail.
const keyLines = 40

// test is what is known of one test while its package runs.
type test struct {
	name    string
	lines   []string // the last keepLines lines of its output
	dropped int      // lines dropped from the front
	keys    []string // the last keyLines lines matching -key
	done    bool
	waited  float64 // seconds it said it waited before it ran (waitedRE)
}

// waitedRE is the line a test prints for time it spent waiting to run.
var waitedRE = regexp.MustCompile(`testreport: waited (\S+)`)

func (t *test) add(s string) {
	t.lines = append(t.lines, s)
	if len(t.lines) > keepLines {
		n := len(t.lines) - keepLines
		t.dropped += n
		t.lines = append(t.lines[:0], t.lines[n:]...)
	}
}

func (t *test) print(w io.Writer) {
	if t.dropped > 0 {
		fmt.Fprintf(w, "    [... %d earlier lines of %s left out]\n", t.dropped, t.name)
	}
	for _, s := range t.lines {
		io.WriteString(w, s)
	}
}

// result is one ended (or never ended) test, for the summary.
type result struct {
	pkg, name string
	seconds   float64 // elapsed, less waited
	waited    float64
	verdict   string // "pass", "fail", "skip", "unfinished"
	keys      []string
}

type report struct {
	out     io.Writer
	note    *regexp.Regexp              // nil: none
	key     *regexp.Regexp              // nil: none
	notes   []string                    // "<test>: <line>"
	running map[string]map[string]*test // package -> test name -> test
	started map[string]bool             // packages that printed anything
	ended   map[string]bool
	results []result
	failed  bool
}

func newReport(out io.Writer) *report {
	return &report{out: out, running: map[string]map[string]*test{}, started: map[string]bool{}, ended: map[string]bool{}}
}

func (r *report) tests(pkg string) map[string]*test {
	m := r.running[pkg]
	if m == nil {
		m = map[string]*test{}
		r.running[pkg] = m
	}
	return m
}

// top reports whether name is a top-level test (subtests are summarised by
// their parent, and their output is part of the parent's).
func top(name string) bool { return !strings.Contains(name, "/") }

func parent(name string) string {
	if i := strings.IndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return name
}

func (r *report) event(e event) {
	if e.Package != "" {
		r.started[e.Package] = true
	}
	if e.Test == "" {
		r.packageEvent(e)
		return
	}
	ts := r.tests(e.Package)
	name := parent(e.Test)
	t := ts[name]
	if t == nil {
		t = &test{name: name}
		ts[name] = t
	}
	switch e.Action {
	case "output":
		t.add(e.Output)
		if m := waitedRE.FindStringSubmatch(e.Output); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				t.waited += d.Seconds()
			}
		}
		if r.key != nil && r.key.MatchString(e.Output) {
			t.keys = append(t.keys, strings.TrimSpace(e.Output))
			if len(t.keys) > keyLines {
				t.keys = t.keys[len(t.keys)-keyLines:]
			}
		}
		if r.note != nil && r.note.MatchString(e.Output) {
			r.notes = append(r.notes, e.Test+": "+strings.TrimSpace(e.Output))
		}
	case "pass", "fail", "skip":
		if !top(e.Test) {
			return
		}
		t.done = true
		r.results = append(r.results, result{e.Package, e.Test, max(e.Elapsed-t.waited, 0), t.waited, e.Action, t.keys})
		if e.Action == "fail" {
			r.failed = true
			t.print(r.out)
		}
		delete(ts, name)
	}
}

func (r *report) packageEvent(e event) {
	switch e.Action {
	case "output":
		if e.Output != "PASS\n" { // the ok line follows
			io.WriteString(r.out, e.Output)
		}
	case "build-output":
		io.WriteString(r.out, e.Output)
	case "build-fail":
		r.failed = true
	case "fail", "pass", "skip":
		r.ended[e.Package] = true
		if e.Action == "fail" {
			r.failed = true
		}
		r.unfinished(e.Package)
	}
}

// unfinished prints and records the tests of pkg that started and never
// ended: the package's end (a timeout's panic, a crash) cut them off.
func (r *report) unfinished(pkg string) {
	ts := r.running[pkg]
	names := make([]string, 0, len(ts))
	for n, t := range ts {
		if !t.done {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(r.out, "--- UNFINISHED: %s (%s): its output up to the end of its package:\n", n, pkg)
		ts[n].print(r.out)
		r.results = append(r.results, result{pkg, n, -1, 0, "unfinished", ts[n].keys})
		r.failed = true
	}
	delete(r.running, pkg)
}

// summary prints the failed and unfinished tests and the slow ones.
func (r *report) summary(slow time.Duration) {
	for pkg := range r.started {
		if !r.ended[pkg] {
			fmt.Fprintf(r.out, "testreport: package %s never ended (the input stopped)\n", pkg)
			r.unfinished(pkg)
		}
	}
	var bad, slowest []result
	var total float64
	for _, res := range r.results {
		switch {
		case res.verdict == "fail" || res.verdict == "unfinished":
			bad = append(bad, res)
		case res.seconds >= slow.Seconds():
			slowest = append(slowest, res)
		}
		if res.seconds > 0 {
			total += res.seconds
		}
	}
	sort.Slice(slowest, func(i, j int) bool { return slowest[i].seconds > slowest[j].seconds })
	fmt.Fprintf(r.out, "\n== test report: %d tests, %.0f s in tests\n", len(r.results), total)
	if len(r.notes) > 0 {
		fmt.Fprintf(r.out, "   noted (%s):\n", r.note)
		for _, n := range r.notes {
			fmt.Fprintf(r.out, "     %s\n", n)
		}
	}
	if len(slowest) > 0 {
		fmt.Fprintf(r.out, "   slower than %v (passed or skipped):\n", slow)
		for _, res := range slowest {
			fmt.Fprintf(r.out, "     %7.1fs  %s  %s%s\n", res.seconds, res.name, res.pkg, waitedNote(res))
		}
	}
	for _, res := range bad {
		if res.verdict == "unfinished" {
			fmt.Fprintf(r.out, "   UNFINISHED  %s  %s (still running when its package ended: a timeout or a crash)\n", res.name, res.pkg)
		} else {
			fmt.Fprintf(r.out, "   FAIL %7.1fs  %s  %s%s\n", res.seconds, res.name, res.pkg, waitedNote(res))
		}
		for _, k := range res.keys {
			fmt.Fprintf(r.out, "       | %s\n", k)
		}
	}
	if len(bad) == 0 && r.failed {
		fmt.Fprintln(r.out, "   a package failed outside its tests (build error, crash in TestMain, vet): see above")
	}
}

func waitedNote(res result) string {
	if res.waited < 0.05 {
		return ""
	}
	return fmt.Sprintf(" (after %.1fs waiting)", res.waited)
}

// writeTimes writes every result, slowest first, to w (see -times).
func (r *report) writeTimes(w io.Writer) error {
	rs := append([]result(nil), r.results...)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].seconds > rs[j].seconds })
	for _, res := range rs {
		if _, err := fmt.Fprintf(w, "%.1f\t%.1f\t%s\t%s\t%s\n", res.seconds, res.waited, res.verdict, res.pkg, res.name); err != nil {
			return err
		}
	}
	return nil
}

func run(in io.Reader, out io.Writer, slow time.Duration, note, key *regexp.Regexp, times io.Writer) bool {
	r := newReport(out)
	r.note, r.key = note, key
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			// Not test2json (a build error goes to go test's stderr,
			// but a wrapper may mix lines in): pass it through.
			fmt.Fprintln(out, sc.Text())
			continue
		}
		r.event(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(out, "testreport: reading the test stream: %v\n", err)
		r.failed = true
	}
	r.summary(slow)
	if times != nil {
		if err := r.writeTimes(times); err != nil {
			fmt.Fprintf(out, "testreport: -times: %v\n", err)
			r.failed = true
		}
	}
	return !r.failed
}

func main() {
	slow := flag.Duration("slow", time.Minute, "list the tests that took at least this long")
	note := flag.String("note", "", "repeat in the summary every test output line matching this regexp")
	key := flag.String("key", "", "repeat under a failed test's summary line its output lines matching this regexp")
	timesPath := flag.String("times", "", "write every test's time to this file, slowest first")
	flag.Parse()
	// times stays a nil interface without -times (a nil *os.File in it
	// would not be).
	var times io.Writer
	var timesFile *os.File
	if *timesPath != "" {
		f, err := os.Create(*timesPath)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testreport: -times: %v\n", err)
			os.Exit(2)
		}
		times, timesFile = f, f
	}
	ok := run(os.Stdin, os.Stdout, *slow, compile("note", *note), compile("key", *key), times)
	if timesFile != nil {
		if err := timesFile.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "testreport: -times: %v\n", err)
			ok = false
		}
	}
	if !ok {
		os.Exit(1)
	}
}

// compile is flag name's regexp, nil when it is empty.
func compile(name, expr string) *regexp.Regexp {
	if expr == "" {
		return nil
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testreport: -%s: %v\n", name, err)
		os.Exit(2)
	}
	return re
}
