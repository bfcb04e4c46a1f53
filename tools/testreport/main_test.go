package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// line builds one test2json line.
func line(action, pkg, test, output string) string {
	var b strings.Builder
	b.WriteString(`{"Action":"` + action + `","Package":"` + pkg + `"`)
	if test != "" {
		b.WriteString(`,"Test":"` + test + `"`)
	}
	if output != "" {
		b.WriteString(`,"Output":` + quote(output))
	}
	b.WriteString("}\n")
	return b.String()
}

func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

func TestReport(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		ok     bool
		want   []string
		absent []string
	}{{
		name: "pass",
		in: line("run", "p", "TestA", "") +
			line("output", "p", "TestA", "=== RUN   TestA\n") +
			line("output", "p", "TestA", "chatter of a passing test\n") +
			line("output", "p", "TestA", "    attempt 1 of 3 spoilt by the test bed\n") +
			`{"Action":"pass","Package":"p","Test":"TestA","Elapsed":75.5}` + "\n" +
			line("output", "p", "", "PASS\n") +
			line("output", "p", "", "ok  \tp\t75.6s\n") +
			`{"Action":"pass","Package":"p","Elapsed":75.6}` + "\n",
		ok:     true,
		want:   []string{"ok  \tp\t75.6s", "1 tests", "75.5s  TestA  p", "TestA: attempt 1 of 3 spoilt by the test bed"},
		absent: []string{"chatter", "FAIL", "UNFINISHED"},
	}, {
		name: "fail shows the test's output and names it last",
		in: line("run", "p", "TestB", "") +
			line("output", "p", "TestB/sub", "    b_test.go:9: it broke\n") +
			`{"Action":"fail","Package":"p","Test":"TestB/sub","Elapsed":1}` + "\n" +
			`{"Action":"fail","Package":"p","Test":"TestB","Elapsed":2}` + "\n" +
			line("output", "p", "", "FAIL\tp\t2.1s\n") +
			`{"Action":"fail","Package":"p","Elapsed":2.1}` + "\n",
		want: []string{"it broke", "FAIL     2.0s  TestB  p"},
	}, {
		name: "a timeout names the test that was running",
		in: line("run", "p", "TestDone", "") +
			`{"Action":"pass","Package":"p","Test":"TestDone","Elapsed":3}` + "\n" +
			line("run", "p", "TestHung", "") +
			line("output", "p", "TestHung", "appliance: waiting\n") +
			line("output", "p", "", "panic: test timed out after 40m0s\n") +
			line("output", "p", "", "FAIL\tp\t2400.0s\n") +
			`{"Action":"fail","Package":"p","Elapsed":2400}` + "\n",
		want:   []string{"panic: test timed out", "--- UNFINISHED: TestHung", "appliance: waiting", "UNFINISHED  TestHung  p"},
		absent: []string{"UNFINISHED: TestDone"},
	}, {
		name: "time spent waiting to run is not counted",
		in: line("run", "p", "TestQueued", "") +
			line("output", "p", "TestQueued", "    e2e_test.go:60: testreport: waited 1m40s for a test-bed slot\n") +
			`{"Action":"pass","Package":"p","Test":"TestQueued","Elapsed":170}` + "\n" +
			line("run", "p", "TestShort", "") +
			line("output", "p", "TestShort", "    e2e_test.go:60: testreport: waited 2m0s for a test-bed slot\n") +
			`{"Action":"pass","Package":"p","Test":"TestShort","Elapsed":150}` + "\n" +
			`{"Action":"pass","Package":"p","Elapsed":400}` + "\n",
		ok:     true,
		want:   []string{"70.0s  TestQueued  p (after 100.0s waiting)", "2 tests, 100 s in tests"},
		absent: []string{"TestShort  p"},
	}, {
		name: "input that stops mid-package",
		in: line("run", "p", "TestCut", "") +
			line("output", "p", "TestCut", "last words\n"),
		want: []string{"package p never ended", "last words", "UNFINISHED  TestCut"},
	}, {
		name: "build errors",
		in: `{"ImportPath":"q [q.test]","Action":"build-output","Output":"q/x.go:1:1: syntax error\n"}` + "\n" +
			`{"ImportPath":"q [q.test]","Action":"build-fail"}` + "\n" +
			"FAIL\tq [build failed]\n",
		want: []string{"syntax error", "FAIL\tq [build failed]", "failed outside its tests"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			ok := run(strings.NewReader(tc.in), &out, time.Minute, regexp.MustCompile(`spoilt`), nil, nil)
			if ok != tc.ok {
				t.Errorf("run = %v, want %v", ok, tc.ok)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(out.String(), a) {
					t.Errorf("output has %q:\n%s", a, out.String())
				}
			}
		})
	}
}

func TestKeepsTheEnd(t *testing.T) {
	var tt test
	tt.name = "TestLong"
	for i := 0; i < keepLines+10; i++ {
		tt.add("x\n")
	}
	tt.add("the end\n")
	var out strings.Builder
	tt.print(&out)
	if !strings.Contains(out.String(), "11 earlier lines of TestLong left out") || !strings.HasSuffix(out.String(), "the end\n") {
		t.Errorf("got %q...", out.String()[:120])
	}
}

// TestTimes: -times lists every top-level test, slowest first, with its
// time less what it waited, the wait, and its verdict.
func TestTimes(t *testing.T) {
	in := line("run", "p", "TestFast", "") +
		`{"Action":"pass","Package":"p","Test":"TestFast","Elapsed":1.5}` + "\n" +
		line("output", "p", "TestSlow", "    e2e_test.go:68: testreport: waited 10s for a test-bed slot\n") +
		`{"Action":"pass","Package":"p","Test":"TestSlow/sub","Elapsed":40}` + "\n" +
		`{"Action":"fail","Package":"p","Test":"TestSlow","Elapsed":52.25}` + "\n" +
		`{"Action":"skip","Package":"p","Test":"TestSkipped","Elapsed":0}` + "\n" +
		`{"Action":"fail","Package":"p","Elapsed":53}` + "\n"
	var out, times strings.Builder
	if run(strings.NewReader(in), &out, time.Minute, nil, nil, &times) {
		t.Error("a failed test reported as a pass")
	}
	want := "42.2\t10.0\tfail\tp\tTestSlow\n" +
		"1.5\t0.0\tpass\tp\tTestFast\n" +
		"0.0\t0.0\tskip\tp\tTestSkipped\n"
	if times.String() != want {
		t.Errorf("times:\n%s\nwant:\n%s", times.String(), want)
	}
}

// TestKeyLines: a failed test's lines matching -key, however early in its
// output, are repeated under its FAIL line, the last keyLines of them; a
// passing test's are not.
func TestKeyLines(t *testing.T) {
	in := line("run", "p", "TestOK", "") +
		line("output", "p", "TestOK", "vm| dump: vcpu 0: fine\n") +
		`{"Action":"pass","Package":"p","Test":"TestOK","Elapsed":1}` + "\n" +
		line("run", "p", "TestHang", "") +
		line("output", "p", "TestHang", "vm| dump: vcpu 0: rip 0xffffffff81000000 hlt\n")
	for i := 0; i < keepLines+keyLines+5; i++ {
		in += line("output", "p", "TestHang", fmt.Sprintf("vm| dump: goroutine %d\n", i))
		if i < keyLines {
			in += line("output", "p", "TestHang", fmt.Sprintf("vm| dump: vcpu %d: runnable\n", i))
		}
	}
	in += line("output", "p", "TestHang", "    x_test.go:1: vm did not power off\n") +
		`{"Action":"fail","Package":"p","Test":"TestHang","Elapsed":9}` + "\n" +
		`{"Action":"fail","Package":"p","Elapsed":10}` + "\n"
	var out strings.Builder
	run(strings.NewReader(in), &out, time.Minute, nil, regexp.MustCompile(`dump: vcpu|did not`), nil)
	_, summary, _ := strings.Cut(out.String(), "== test report")
	for _, w := range []string{"FAIL     9.0s  TestHang  p\n       | vm| dump: vcpu 1: runnable\n", "| vm| dump: vcpu 39: runnable\n       | x_test.go:1: vm did not power off\n"} {
		if !strings.Contains(summary, w) {
			t.Errorf("summary lacks %q:\n%s", w, summary)
		}
	}
	for _, a := range []string{"vcpu 0: rip", "fine", "goroutine"} {
		if strings.Contains(summary, a) {
			t.Errorf("summary has %q:\n%s", a, summary)
		}
	}
}
