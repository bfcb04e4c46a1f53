package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/internal/api"
)

// ctlMain is `hyperroot ctl`: the API's client. On the appliance it speaks
// to the root-only unix socket; anywhere else (a laptop, a CI host) to the
// network listener, given its address, the certificate's fingerprint the
// console printed, and a token. The token comes from the environment or a
// file, never the command line, where every process could read it.
func ctlMain(args []string) int {
	fs := flag.NewFlagSet("hyperroot ctl", flag.ContinueOnError)
	socket := fs.String("socket", api.SocketPath, "the API's unix socket (on the appliance)")
	addr := fs.String("url", os.Getenv("HYPERROOT_URL"), "the API's network address, https://host:port (default $HYPERROOT_URL; the unix socket if empty)")
	pin := fs.String("fingerprint", os.Getenv("HYPERROOT_FINGERPRINT"), "the appliance's certificate, sha256:<hex> as its console prints it (default $HYPERROOT_FINGERPRINT)")
	tokenFile := fs.String("token-file", "", "a file holding the bearer token (default: $HYPERROOT_TOKEN)")
	output := fs.String("o", "table", "output: table (for people) or json (for scripts)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: hyperroot ctl [flags] %s\n", ctlUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(os.Stderr, "hyperroot ctl: -o %s: want table or json\n", *output)
		return 2
	}
	c, err := ctlClient(*socket, *addr, *pin, *tokenFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hyperroot ctl: %v\n", err)
		return 2
	}
	if fs.NArg() == 1 && fs.Arg(0) == "shell" {
		return ctlShell(c, *output == "json")
	}
	if err := ctlRun(c, fs.Args(), os.Stdout, *output == "json"); err != nil {
		fmt.Fprintf(os.Stderr, "hyperroot ctl: %v\n", err)
		return 1
	}
	return 0
}

// ctlClient is the client the flags ask for.
func ctlClient(socket, addr, pin, tokenFile string) (*api.Client, error) {
	if addr == "" {
		return api.NewUnixClient(socket), nil
	}
	token := os.Getenv("HYPERROOT_TOKEN")
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, fmt.Errorf("%s: no token: set HYPERROOT_TOKEN or give -token-file", addr)
	}
	return api.NewClient(addr, token, pin)
}

const ctlUsage = "host | metrics | networks | ports | leases | config get | config apply -f <file> | vm list | vm create -f <file> | vm delete <name> | vm get|start|stop|restart <name> | vm qos <name> [<qos as JSON>] | vm console <name> [<tail lines>] | vm attach <name> | vm send <name> <text> | capture <port> [<frames> [<seconds>]] (pcap on stdout) | shell (commands from stdin, one per line, until exit)"

// ctlShell runs one command per line of stdin, each answer or error on
// stdout, until stdin ends or says "exit": a session for the console's
// "@run" lines.
func ctlShell(c *api.Client, asJSON bool) int {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "exit" {
			break
		}
		if line != "" {
			if err := ctlRun(c, strings.Fields(line), os.Stdout, asJSON); err != nil {
				fmt.Printf("ctl: %s: %v\n", line, err)
			}
		}
	}
	return 0
}

// ctlRun runs one command and prints its answer: a table, or the API's
// JSON as it came.
func ctlRun(c *api.Client, args []string, out io.Writer, asJSON bool) error {
	ctx := context.Background()
	print := func(v any, table func()) {
		if asJSON {
			json.NewEncoder(out).Encode(v)
			return
		}
		table()
	}
	switch {
	case len(args) == 1 && args[0] == "host":
		var h api.Host
		if err := c.Do(ctx, "GET", "/v1/host", nil, &h); err != nil {
			return err
		}
		print(h, func() {
			fmt.Fprintf(out, "hyperroot %s kernel %s cpus %d memory %d kvm %s\n", h.Version, h.Kernel, h.CPUs, h.Memory, h.KVM)
		})
	case len(args) == 1 && args[0] == "leases":
		var leases []api.Lease
		if err := c.Do(ctx, "GET", "/v1/leases", nil, &leases); err != nil {
			return err
		}
		print(leases, func() {
			fmt.Fprintf(out, "%-16s %-15s %-17s %-16s %s\n", "NETWORK", "IP", "MAC", "VM", "EXPIRES")
			for _, l := range leases {
				fmt.Fprintf(out, "%-16s %-15s %-17s %-16s %s\n", l.Network, l.IP, l.MAC, l.VM, l.Expires)
			}
		})
	case len(args) == 1 && args[0] == "networks":
		var nets []api.Network
		if err := c.Do(ctx, "GET", "/v1/networks", nil, &nets); err != nil {
			return err
		}
		print(nets, func() {
			fmt.Fprintf(out, "%-16s %-18s %-15s %-31s %-6s %6s %s\n", "NETWORK", "SUBNET", "GATEWAY", "DHCP", "MTU", "LEASES", "PORTS")
			for _, n := range nets {
				fmt.Fprintf(out, "%-16s %-18s %-15s %-31s %-6d %6d %s\n", n.Name, n.Subnet, n.Gateway, cmp.Or(n.DHCP, "-"), n.MTU, n.Leases, strings.Join(n.Ports, ","))
			}
		})
	case len(args) == 1 && args[0] == "ports":
		var ports []api.Port
		if err := c.Do(ctx, "GET", "/v1/ports", nil, &ports); err != nil {
			return err
		}
		print(ports, func() {
			fmt.Fprintf(out, "%-24s %12s %14s %12s %14s %s\n", "PORT", "RX_PACKETS", "RX_BYTES", "TX_PACKETS", "TX_BYTES", "DROPS")
			for _, p := range ports {
				var drops []string
				for _, r := range slices.Sorted(maps.Keys(p.Drops)) {
					drops = append(drops, fmt.Sprintf("%s=%d", r, p.Drops[r]))
				}
				fmt.Fprintf(out, "%-24s %12d %14d %12d %14d %s\n", p.Name, p.RxPackets, p.RxBytes, p.TxPackets, p.TxBytes, strings.Join(drops, ","))
			}
		})
	case len(args) == 2 && args[0] == "config" && args[1] == "get":
		text, err := c.Get(ctx, "/v1/config")
		if err != nil {
			return err
		}
		out.Write(text)
	case len(args) == 4 && args[0] == "config" && args[1] == "apply" && args[2] == "-f":
		text, err := os.ReadFile(args[3])
		if err != nil {
			return err
		}
		var r api.ConfigResult
		if err := c.Do(ctx, "PUT", "/v1/config", text, &r); err != nil {
			return err
		}
		print(r, func() { fmt.Fprintf(out, "config applied: %s\n", r) })
	case len(args) == 4 && args[0] == "vm" && args[1] == "create" && args[2] == "-f":
		text, err := os.ReadFile(args[3])
		if err != nil {
			return err
		}
		var vm api.VM
		if err := c.Do(ctx, "POST", "/v1/vms", text, &vm); err != nil {
			return err
		}
		print(vm, func() { fmt.Fprintf(out, "vm %s %s pid %d\n", vm.Name, vm.State, vm.PID) })
	case len(args) == 3 && args[0] == "vm" && args[1] == "delete":
		var d api.Deleted
		if err := c.Do(ctx, "DELETE", "/v1/vms/"+url.PathEscape(args[2]), nil, &d); err != nil {
			return err
		}
		print(d, func() { fmt.Fprintf(out, "vm %s deleted\n", d.Deleted) })
	case len(args) == 2 && args[0] == "vm" && args[1] == "list":
		var vms []api.VM
		if err := c.Do(ctx, "GET", "/v1/vms", nil, &vms); err != nil {
			return err
		}
		print(vms, func() {
			fmt.Fprintf(out, "%-32s %-8s %7s %5s %10s %s\n", "NAME", "STATE", "PID", "CPUS", "MEMORY", "RESTART")
			for _, vm := range vms {
				fmt.Fprintf(out, "%-32s %-8s %7d %5d %9dM %s\n", vm.Name, vm.State, vm.PID, vm.CPUs, vm.Memory>>20, vm.Restart)
			}
		})
	case len(args) == 1 && args[0] == "metrics":
		text, err := c.Get(ctx, "/metrics")
		if err != nil {
			return err
		}
		out.Write(text)
	case (len(args) == 3 || len(args) == 4) && args[0] == "vm" && args[1] == "console":
		path := "/v1/vms/" + url.PathEscape(args[2]) + "/console"
		if len(args) == 4 {
			path += "?tail=" + url.QueryEscape(args[3])
		}
		body, err := c.Follow(ctx, path)
		if err != nil {
			return err
		}
		defer body.Close()
		return printConsole(body, out)
	case len(args) >= 2 && len(args) <= 4 && args[0] == "capture":
		return ctlCapture(ctx, c, args[1], args[2:], out)
	case len(args) == 3 && args[0] == "vm" && args[1] == "attach":
		return ctlAttach(ctx, c, args[2], os.Stdin, out)
	case len(args) >= 4 && args[0] == "vm" && args[1] == "send":
		var sent api.Sent
		if err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(args[2])+"/console", []byte(strings.Join(args[3:], " ")+"\n"), &sent); err != nil {
			return err
		}
		print(sent, func() { fmt.Fprintf(out, "sent %d line(s) to %s\n", sent.Lines, args[2]) })
	case len(args) >= 3 && args[0] == "vm" && args[1] == "qos":
		var q api.QoS
		method, body := "GET", []byte(nil)
		if len(args) > 3 {
			method, body = "PUT", []byte(strings.Join(args[3:], " "))
		}
		if err := c.Do(ctx, method, "/v1/vms/"+url.PathEscape(args[2])+"/qos", body, &q); err != nil {
			return err
		}
		print(q, func() { fmt.Fprintln(out, q.QoS) })
	case len(args) == 3 && args[0] == "vm":
		// Escaped: the server checks the name, and a name must not
		// become another path on the way.
		name := url.PathEscape(args[2])
		method, path := "POST", "/v1/vms/"+name+"/"+args[1]
		switch args[1] {
		case "get":
			method, path = "GET", "/v1/vms/"+name
		case "start", "stop", "restart":
		default:
			return fmt.Errorf("usage: %s", ctlUsage)
		}
		var vm api.VM
		if err := c.Do(ctx, method, path, nil, &vm); err != nil {
			return err
		}
		print(vm, func() { fmt.Fprintf(out, "vm %s %s pid %d\n", vm.Name, vm.State, vm.PID) })
	default:
		return fmt.Errorf("usage: %s", ctlUsage)
	}
	return nil
}

// ctlCapture writes a live capture of a switch port to out as a pcap file
// (tcpdump -r -, Wireshark), until it has the frames asked for (limits[0],
// 0 or none: no limit), the seconds asked for (limits[1]) have passed, or
// it is interrupted. It will not write binary to a terminal.
func ctlCapture(ctx context.Context, c *api.Client, port string, limits []string, out io.Writer) error {
	if f, ok := out.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			return fmt.Errorf("capture %s: a pcap stream is binary: redirect it to a file or pipe it to tcpdump -r -", port)
		}
	}
	q := url.Values{}
	for i, key := range []string{"count", "seconds"} {
		if i < len(limits) {
			q.Set(key, limits[i])
		}
	}
	body, err := c.Follow(ctx, "/v1/ports/"+url.PathEscape(port)+"/capture?"+q.Encode())
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = io.Copy(out, body)
	return err
}

// ctlAttach follows VM name's console on out and types each line of in on
// it, until in ends: an interactive session on a serial console over the
// API.
func ctlAttach(ctx context.Context, c *api.Client, name string, in io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	path := "/v1/vms/" + url.PathEscape(name) + "/console"
	body, err := c.Follow(ctx, path+"?tail=20")
	if err != nil {
		return err
	}
	defer body.Close()
	done := make(chan error, 1)
	go func() { done <- printConsole(body, out) }()
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		if err := c.Do(ctx, "POST", path, []byte(lines.Text()+"\n"), nil); err != nil {
			return err
		}
	}
	select { // what the last line made the guest say, if it says it soon
	case err := <-done:
		return err
	case <-time.After(attachLinger):
	}
	return lines.Err()
}

// printConsole prints a console stream's lines on out, made printable,
// until it ends.
func printConsole(stream io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(stream)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		fmt.Fprintln(out, printable(sc.Text()))
	}
	return sc.Err()
}

// attachLinger is how long an attach goes on following the console after
// its input ended.
var attachLinger = 2 * time.Second

// printable is a guest's console line made safe for the terminal it is
// printed on: control characters (a guest's escape sequences could
// rewrite the operator's screen) become U+FFFD; tabs stay.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\t') || (r >= 0x7f && r < 0xa0) {
			return '\uFFFD'
		}
		return r
	}, s)
}
