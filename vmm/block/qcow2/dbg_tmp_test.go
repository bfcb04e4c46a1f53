package qcow2

import (
	"fmt"
	"os"
	"runtime"
	"time"
)

func watchdog(data []byte) func() {
	start := time.Now()
	f, _ := os.OpenFile(fmt.Sprintf("/tmp/qfuzz-log-%d", os.Getpid()), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	fmt.Fprintf(f, "start %d bytes\n", len(data))
	stop := time.AfterFunc(2*time.Second, func() {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		os.WriteFile("/tmp/qfuzz-hang.txt", buf[:n], 0o644)
		os.WriteFile("/tmp/qfuzz-hang.bin", data, 0o644)
		panic("hang")
	}).Stop
	return func() {
		stop()
		fmt.Fprintf(f, "done %v\n", time.Since(start))
		f.Close()
	}
}
