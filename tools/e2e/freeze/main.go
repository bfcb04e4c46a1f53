// Command freeze is the hyperroot.run job of the e2e test TestNetSwitchHung:
// it stands for whatever can leave the switch process alive but doing
// nothing (a stop signal, a starved machine). At the first line on its
// standard input (the console's "@run <text>") it sends SIGSTOP to every
// process running as "<binary> switch ...", says which, and exits 0 once
// none of those is left stopped, that is, once PID 1 has killed the hung
// switch and started another (its input's end or a second line ends it too).
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/tools/e2e/procs"
)

// switches are the pids whose command line's first argument is "switch".
func switches() []int {
	return procs.Find(func(args []string) bool { return len(args) > 1 && args[1] == "switch" })
}

// stopped reports whether pid exists and is in the stopped state.
func stopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	return len(f) > 0 && f[0] == "T"
}

func main() {
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if _, ok := <-lines; !ok {
		fmt.Println("freeze: no line on input: nothing done")
		return
	}
	pids := switches()
	if len(pids) == 0 {
		fmt.Println("freeze: FAIL no switch process found")
		os.Exit(1)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
			fmt.Printf("freeze: FAIL SIGSTOP %d: %v\n", pid, err)
			os.Exit(1)
		}
		fmt.Printf("freeze: switch pid=%d stopped\n", pid)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				return
			}
			fmt.Println("freeze: told to end")
			return
		case <-tick.C:
		}
		left := false
		for _, pid := range pids {
			left = left || stopped(pid)
		}
		if !left {
			fmt.Printf("freeze: the stopped switch is gone; running now: %v\n", switches())
			return
		}
	}
}
