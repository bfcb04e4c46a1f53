package kvmtests

import (
	"reflect"
	"regexp"
	"testing"
)

func TestFind(t *testing.T) {
	pkgs, err := Find("testdata/tree")
	if err != nil {
		t.Fatal(err)
	}
	want := []Package{{
		Dir:        "kvm",
		Tests:      []string{"TestClosure", "TestDirect", "TestHelper"},
		Benchmarks: []string{"BenchmarkExit"},
	}}
	if !reflect.DeepEqual(pkgs, want) {
		t.Fatalf("Find = %+v, want %+v", pkgs, want)
	}
	re := regexp.MustCompile(pkgs[0].RunRegexp())
	for name, match := range map[string]bool{"TestDirect": true, "TestHelper": true, "TestNoKVM": false, "TestDirectX": false} {
		if re.MatchString(name) != match {
			t.Errorf("RunRegexp %s matches %s: %v, want %v", re, name, !match, match)
		}
	}
	if got := pkgs[0].BenchRegexp(); got != "^(BenchmarkExit)$" {
		t.Errorf("BenchRegexp = %q", got)
	}
}

// TestFindRepo: the module's own KVM tests are found where they are known
// to be, so that a rename cannot quietly move them out of the appliance run.
func TestFindRepo(t *testing.T) {
	pkgs, err := Find("../..")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, p := range pkgs {
		got[p.Dir] = p.Tests
	}
	for dir, test := range map[string]string{"vmm/kvm": "TestSystem", "vmm/machine": "TestMSIRouterAndIOEvents", "init": "TestVMMBadInput"} {
		found := false
		for _, n := range got[dir] {
			found = found || n == test
		}
		if !found {
			t.Errorf("%s: %s not found among KVM tests %v", dir, test, got[dir])
		}
	}
}
