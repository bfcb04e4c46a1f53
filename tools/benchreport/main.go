// Command benchreport gathers the figures of a `./build.sh bench` run (the
// "bench: result" lines each benchmark prints, tools/bench/result) from the
// benchmarks' logs into one table: results.json and results.md in -out,
// with the machine, the date and the commit; it prints the table.
//
// Usage: go run ./tools/benchreport -out out/bench out/bench/*.log
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/hyperroot/hyperroot/tools/bench/result"
)

func main() {
	out := flag.String("out", "out/bench", "where to write results.json and results.md")
	flag.Parse()
	rep, err := gather(flag.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchreport: %v\n", err)
		os.Exit(1)
	}
	rep.Machine, rep.Date, rep.Commit = machine(), time.Now().UTC().Format(time.RFC3339), commit()
	if err := write(*out, rep); err != nil {
		fmt.Fprintf(os.Stderr, "benchreport: %v\n", err)
		os.Exit(1)
	}
	fmt.Print(rep.Markdown())
}

// gather reads every log's figures, in the order of the logs.
func gather(logs []string) (result.Report, error) {
	var rep result.Report
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			return rep, err
		}
		figs, err := result.Read(f)
		f.Close()
		if err != nil {
			return rep, fmt.Errorf("%s: %w", path, err)
		}
		for _, fig := range figs {
			rep.Rows = append(rep.Rows, result.Summary(fig))
		}
	}
	if len(rep.Rows) == 0 {
		return rep, fmt.Errorf("no 'bench: result' lines in %s", strings.Join(logs, ", "))
	}
	return rep, nil
}

func write(dir string, rep result.Report) error {
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(rep.Markdown()), 0o644)
}

// machine describes the host the appliance ran on: the benchmarks ran in a
// TCG appliance there, so its CPU and cores are what the figures depend on.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(data)); len(f) >= 2 && f[0] == "MemTotal:" {
			var kb int64
			fmt.Sscan(f[1], &kb)
			mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
		}
	}
	kernel := ""
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(data))
	}
	return fmt.Sprintf("%s, %d cores%s%s", model, runtime.NumCPU(), mem, kernel)
}

func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
