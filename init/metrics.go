package main

import (
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hyperroot/hyperroot/internal/api"
	"github.com/hyperroot/hyperroot/net/vswitch"
)

// /metrics, in Prometheus's text format, beside the API on both its
// listeners: each VM's state, starts and exits, and what its VMM's cgroup
// accounts (CPU time of its vCPU and other threads, memory, block I/O);
// each switch port's counters and drops by reason, as the switch last sent
// them (with its heartbeat, every 10 s); PID 1's own process figures.
// Everything is read at scrape time: nothing is counted twice, and a
// scrape costs the appliance nothing between scrapes.

// fleetCollector reads the fleet and the switch at each scrape.
type fleetCollector struct {
	f  *fleet
	sw *netSwitch // nil without a switch
	// leases reads the DHCP leases in force (the API's), nil for none.
	leases func() ([]api.Lease, error)
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("hyperroot_"+name, help, labels, nil)
}

var (
	mVMRunning    = desc("vm_running", "Whether the VM's VMM runs (1) or not (0).", "vm")
	mVMCPUs       = desc("vm_vcpus", "The VM's configured vCPUs.", "vm")
	mVMMemCfg     = desc("vm_memory_configured_bytes", "The VM's configured guest RAM.", "vm")
	mVMStarts     = desc("vm_starts_total", "Starts of the VM's VMM (first and restarts).", "vm")
	mVMKVMExits   = desc("vm_kvm_exits_total", "Exits of the VM's vCPUs from the guest into KVM since its VMM started, as KVM counts them, by reason (io, mmio, halt, irq, irq_window, nmi_window, other); reported by the VMM every 10 s.", "vm", "reason")
	mVMKVMEvents  = desc("vm_kvm_events_total", "Other counts KVM keeps of the VM's vCPUs since its VMM started (irq_injections, nmi_injections, pf_fixed, insn_emulation, halt_wakeup, and its returns to the VMM: signal_exits, request_irq_exits).", "vm", "event")
	mVMExits      = desc("vm_exits_total", "Exits of the VM's VMM by reason (poweroff, reboot, crash, oom, pids, seccomp, killed, ...).", "vm", "reason")
	mVMCPU        = desc("vm_cpu_seconds_total", "CPU time of the VM's running VMM (its cgroup: vCPU threads and device models), since its last start.", "vm")
	mVMMem        = desc("vm_memory_bytes", "Memory charged to the VM's running VMM (its cgroup's memory.current: guest RAM and the VMM's own).", "vm")
	mVMMemStat    = desc("vm_memory_stat_bytes", "The VM's memory by kind (memory.stat): shmem is guest RAM, shmem_thp the part of it in 2 MiB pages, anon and kernel the VMM's own.", "vm", "kind")
	mVMDiskB      = desc("vm_disk_bytes_total", "Block I/O bytes of the VM's running VMM by device and direction (cgroup io.stat: block devices, not files on tmpfs).", "vm", "device", "op")
	mVMDiskOps    = desc("vm_disk_ops_total", "Block I/O requests of the VM's running VMM by device and direction (cgroup io.stat).", "vm", "device", "op")
	mVMBlkReqs    = desc("vm_virtio_blk_requests_total", "Requests the VM's virtio-blk disk completed, by class (read, write, flush, discard), failed ones included; counted by its VMM since it started.", "vm", "disk", "op")
	mVMBlkBytes   = desc("vm_virtio_blk_bytes_total", "Bytes the VM's virtio-blk disk read, wrote or zeroed by class, counted by its VMM.", "vm", "disk", "op")
	mVMBlkErrs    = desc("vm_virtio_blk_errors_total", "Requests the VM's virtio-blk disk completed with an error status, by class.", "vm", "disk", "op")
	mVMBlkLatency = desc("vm_virtio_blk_request_seconds", "Latency of the VM's virtio-blk requests as its guest sees them (from the device taking a request to giving it back, limiter waits included), by class.", "vm", "disk", "op")

	mLeases     = desc("network_leases", "DHCP leases in force that the switch granted on a network (its lease file, read at scrape time).", "network")
	mPortPkts   = desc("switch_port_packets_total", "Frames through a switch port: rx delivered to the VM (or host, uplink), tx sent by it.", "port", "dir")
	mPortBytes  = desc("switch_port_bytes_total", "Bytes of Ethernet frames through a switch port, without the virtio-net header.", "port", "dir")
	mPortDrops  = desc("switch_port_drops_total", "Frames a switch port dropped, by reason.", "port", "reason")
	mPortCuts   = desc("switch_port_cutoffs_total", "Connections of a port's vhost-user frontend the switch ended for the frontend's fault.", "port")
	mPortQueued = desc("switch_port_queued_total", "Frames for a VM that found its receive ring empty and waited in the switch's backlog for buffers: counted as rx packets once delivered, as no_buffer drops if the queue stopped, the ring broke or the frame outgrew the buffers. A frame the full backlog refused is a no_buffer drop only.", "port")
)

func (fc fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(fc, ch)
}

func (fc fleetCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	fc.f.mu.Lock()
	entries := maps.Clone(fc.f.vms)
	fc.f.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		e := entries[name]
		running := 0.0
		if e.sup != nil && e.sup.Process() != nil {
			running = 1
		}
		gauge(mVMRunning, running, name)
		gauge(mVMCPUs, float64(e.vm.CPUs), name)
		gauge(mVMMemCfg, float64(e.vm.Memory), name)
		counter(mVMStarts, float64(e.starts.Load()), name)
		e.mu.Lock()
		g, exits, kvm, disks := e.group, maps.Clone(e.exits), e.kvm, maps.Clone(e.disks)
		e.mu.Unlock()
		diskMetrics(ch, &e.vm, disks)
		for _, r := range slices.Sorted(maps.Keys(exits)) {
			counter(mVMExits, float64(exits[r]), name, r)
		}
		if kvm != nil {
			kvmMetrics(counter, name, kvm)
		}
		if g == nil {
			continue
		}
		if d, err := g.CPUUsage(); err == nil {
			counter(mVMCPU, d.Seconds(), name)
		}
		if n, err := g.MemoryCurrent(); err == nil {
			gauge(mVMMem, float64(n), name)
		}
		if st, err := g.Keyed("memory.stat"); err == nil {
			for _, k := range []string{"anon", "kernel", "shmem", "shmem_thp"} {
				gauge(mVMMemStat, float64(st[k]), name, k)
			}
		}
		if st, err := g.Get("io.stat"); err == nil {
			for _, d := range parseIOStat(st) {
				counter(mVMDiskB, float64(d.rbytes), name, d.dev, "read")
				counter(mVMDiskB, float64(d.wbytes), name, d.dev, "write")
				counter(mVMDiskOps, float64(d.rios), name, d.dev, "read")
				counter(mVMDiskOps, float64(d.wios), name, d.dev, "write")
			}
		}
	}
	if fc.leases != nil {
		if leases, err := fc.leases(); err == nil {
			by := map[string]int{}
			for _, l := range leases {
				by[l.Network]++
			}
			for _, nw := range slices.Sorted(maps.Keys(by)) {
				gauge(mLeases, float64(by[nw]), nw)
			}
		}
	}
	if fc.sw == nil {
		return
	}
	ports := fc.sw.stats.snapshot()
	for _, p := range slices.Sorted(maps.Keys(ports)) {
		c := ports[p]
		counter(mPortPkts, float64(c.RxPackets), p, "rx")
		counter(mPortPkts, float64(c.TxPackets), p, "tx")
		counter(mPortBytes, float64(c.RxBytes), p, "rx")
		counter(mPortBytes, float64(c.TxBytes), p, "tx")
		for r := range vswitch.NumDropReasons {
			counter(mPortDrops, float64(c.Drops[r]), p, r.String())
		}
		counter(mPortCuts, float64(c.CutOffs), p)
		counter(mPortQueued, float64(c.RxQueued), p)
	}
}

// ioDevice is one device's line of a cgroup's io.stat.
type ioDevice struct {
	dev                        string // major:minor
	rbytes, wbytes, rios, wios uint64
}

// parseIOStat reads io.stat: "<major>:<minor> rbytes=<n> wbytes=<n>
// rios=<n> wios=<n> ..." per device.
func parseIOStat(stat string) []ioDevice {
	var out []ioDevice
	for _, line := range strings.Split(stat, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.Contains(f[0], ":") {
			continue
		}
		d := ioDevice{dev: f[0]}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "rbytes":
				d.rbytes = n
			case "wbytes":
				d.wbytes = n
			case "rios":
				d.rios = n
			case "wios":
				d.wios = n
			}
		}
		out = append(out, d)
	}
	return out
}

// metricsHandler serves /metrics of the fleet and the switch, and of PID
// 1's own process and Go runtime.
func metricsHandler(f *fleet, sw *netSwitch, leases func() ([]api.Lease, error)) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(fleetCollector{f: f, sw: sw, leases: leases},
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "hyperroot_init"}),
		collectors.NewGoCollector())
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4})
}

// kvmMetrics turns a VMM's KVM counts (parseKVMStats) into exits by reason,
// "other" being the exits no cause counted, and the other events.
func kvmMetrics(counter func(*prometheus.Desc, float64, ...string), vm string, kvm map[string]uint64) {
	var caused uint64
	for _, name := range kvmReported {
		v, ok := kvm[name]
		if !ok || name == "exits" {
			continue
		}
		// signal_exits and request_irq_exits count returns to the VMM,
		// not exits from the guest (a signal's kick adds to exits and
		// irq_exits too): events, or "other" could go down.
		if reason, ok := strings.CutSuffix(name, "_exits"); ok && name != "signal_exits" && name != "request_irq_exits" {
			counter(mVMKVMExits, float64(v), vm, reason)
			caused += v
		} else {
			counter(mVMKVMEvents, float64(v), vm, name)
		}
	}
	if all, ok := kvm["exits"]; ok && all >= caused {
		counter(mVMKVMExits, float64(all-caused), vm, "other")
	}
}
