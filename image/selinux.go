package image

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// PolicySource is the appliance's SELinux policy, in the kernel policy
// language, relative to the repository's root.
const PolicySource = "image/selinux/policy.conf"

// PolicyVersion is the binary policy format written: the newest the
// kernels of Debian bookworm (6.1) read.
const PolicyVersion = 33

// CompilePolicy compiles the policy source src into the binary policy dst
// with checkpolicy: MLS (the MCS categories that keep VMs apart), and
// classes and permissions the policy does not name allowed (-U allow),
// so that a newer kernel's additions do not turn into denials.
func CompilePolicy(ctx context.Context, src, dst string) error {
	cmd := exec.CommandContext(ctx, "checkpolicy", "-M", "-U", "allow", "-c", fmt.Sprint(PolicyVersion), "-o", dst, src)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("checkpolicy %s: %w\n%s", src, err, errorLines(string(out)))
	}
	return nil
}

// errorLines keeps checkpolicy's complaints and drops its notes about
// initial SIDs the policy leaves without a context on purpose.
func errorLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.Contains(l, "No context assigned to SID") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
