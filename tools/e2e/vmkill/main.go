// Command vmkill is the hyperroot.run job of the e2e test TestQcow2Kill: it
// stands for whatever kills a VMM outright (the OOM killer, a crash, an
// operator's kill -9). For each line on its standard input (the console's
// "@run <vm name>") it sends SIGKILL to that VM's VMM process and says so.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// vmms are the pids running "<binary> vmm --name <name> ...".
func vmms(name string) []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil {
			continue
		}
		args := bytes.Split(b, []byte{0})
		if len(args) > 3 && string(args[1]) == "vmm" && string(args[2]) == "--name" && string(args[3]) == name {
			pid, _ := strconv.Atoi(filepath.Base(d))
			out = append(out, pid)
		}
	}
	return out
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
