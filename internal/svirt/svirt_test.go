package svirt

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestPairAtCoversEveryPairOnce(t *testing.T) {
	seen := map[Pair]bool{}
	for i := 0; i < pairs; i++ {
		p := pairAt(i)
		if p[0] >= p[1] || p[1] >= Categories {
			t.Fatalf("pairAt(%d) = %v: want c_a < c_b < c%d", i, p, Categories)
		}
		if seen[p] {
			t.Fatalf("pairAt(%d) = %v twice", i, p)
		}
		seen[p] = true
	}
	if got, want := pairAt(0), (Pair{0, 1}); got != want {
		t.Errorf("first pair %v, want %v", got, want)
	}
	if got, want := pairAt(pairs-1), (Pair{Categories - 2, Categories - 1}); got != want {
		t.Errorf("last pair %v, want %v", got, want)
	}
}

func TestAssignUniqueStableAndReleased(t *testing.T) {
	var c Categorizer
	got := map[Pair]string{}
	for i := 0; i < 2000; i++ {
		vm := fmt.Sprintf("vm%d", i)
		p, err := c.Assign(vm)
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := got[p]; dup {
			t.Fatalf("%s and %s both got %v", other, vm, p)
		}
		got[p] = vm
		if again, _ := c.Assign(vm); again != p {
			t.Fatalf("%s: %v then %v while running", vm, p, again)
		}
	}
	// A VM that stops and starts again gets the same pair back.
	p, _ := c.Assign("vm7")
	c.Release("vm7")
	if q, _ := c.Assign("vm7"); q != p {
		t.Errorf("vm7 restarted with %v, had %v", q, p)
	}
}

func TestAssignExhausted(t *testing.T) {
	var c Categorizer
	for i := 0; i < pairs; i++ {
		if _, err := c.Assign(fmt.Sprint(i)); err != nil {
			t.Fatalf("pair %d: %v", i, err)
		}
	}
	if _, err := c.Assign("one too many"); err == nil {
		t.Fatal("no error with every pair taken")
	}
	c.Release("5")
	if _, err := c.Assign("one too many"); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}

func TestLabels(t *testing.T) {
	p := Pair{3, 17}
	if got := p.ProcessLabel(); got != "system_u:system_r:svirt_t:s0:c3,c17" {
		t.Errorf("process label %q", got)
	}
	if got := p.ImageLabel(); got != "system_u:object_r:svirt_image_t:s0:c3,c17" {
		t.Errorf("image label %q", got)
	}
}

// Every label the Go side hands the kernel names a type, role and user the
// policy declares, at a level it allows: a typo here would be an error
// only on a booted appliance.
func TestLabelsExistInPolicy(t *testing.T) {
	src, err := os.ReadFile("../../image/selinux/policy.conf")
	if err != nil {
		t.Fatal(err)
	}
	policy := string(src)
	declared := func(kind, name string) bool {
		return regexp.MustCompile(`(?m)^` + kind + ` ` + regexp.QuoteMeta(name) + `[,; ]`).MatchString(policy)
	}
	p := Pair{0, Categories - 1}
	for _, l := range []string{ContentLabel, SwitchLabel, KVMLabel, TunLabel, NullLabel, RunLabel, ConfLabel, TmpLabel, ClosedSocketLabel, p.ProcessLabel(), p.ImageLabel(), p.SocketLabel()} {
		f := strings.SplitN(l, ":", 4)
		if len(f) != 4 {
			t.Errorf("%q: not user:role:type:level", l)
			continue
		}
		if !declared("user", f[0]) || (f[1] != "object_r" && !declared("role", f[1])) || !declared("type", f[2]) {
			t.Errorf("%q: user, role or type not declared in policy.conf", l)
		}
	}
	if !strings.Contains(policy, fmt.Sprintf("level s0:c0.c%d;", Categories-1)) {
		t.Errorf("policy.conf does not declare categories c0..c%d", Categories-1)
	}
}

func TestHasFilesystem(t *testing.T) {
	list := []byte("nodev\tsysfs\nnodev\tselinuxfs\n\text4\n")
	if !hasFilesystem(list, "selinuxfs") || !hasFilesystem(list, "ext4") || hasFilesystem(list, "selinux") {
		t.Error("hasFilesystem misreads /proc/filesystems")
	}
}
