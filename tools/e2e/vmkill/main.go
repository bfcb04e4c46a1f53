// Command vmkill is the hyperroot.run job of the e2e test TestQcow2Kill: it
// stands for whatever kills a VMM outright (the OOM killer, a crash, an
// operator's kill -9). For each line on its standard input (the console's
// "@run <vm name>") it sends SIGKILL to that VM's VMM process and says so.
package main

import (
	"bufio"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/tools/e2e/procs"
)

// vmms are the pids running "<binary> vmm --name <name> ...".
func vmms(name string) []int {
	return procs.Find(func(args []string) bool {
		return len(args) > 3 && args[1] == "vmm" && args[2] == "--name" && args[3] == name
	})
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		name := sc.Text()
		pids := vmms(name)
		if len(pids) == 0 {
			fmt.Printf("vmkill: FAIL no VMM of vm %s\n", name)
			continue
		}
		for _, pid := range pids {
			if err := unix.Kill(pid, unix.SIGKILL); err != nil {
				fmt.Printf("vmkill: FAIL SIGKILL %d: %v\n", pid, err)
				continue
			}
			fmt.Printf("vmkill: vm %s pid=%d killed\n", name, pid)
		}
	}
}
