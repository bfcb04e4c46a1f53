package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperroot/hyperroot/init/config"
	"github.com/hyperroot/hyperroot/internal/netconf"
)

// The appliance's management address lives here, in PID 1 and not in the
// switch: the host port hr-host is a tap device the switch process owns,
// so a switch restart destroys it together with its address and routes.
// The supervisor holds the DHCP lease (or the static address) and puts it
// back on the new tap as soon as netlink says the link came back.

// defaultIPDevice is where ip= applies when it names no device and the
// configuration has no host port.
const defaultIPDevice = "eth0"

// hostPlan is what the supervisor configures on its management interface.
type hostPlan struct {
	Device string
	// DHCP obtains the address by DHCP; otherwise Address is static.
	DHCP    bool
	Address netip.Prefix
	// Gateway, if valid, is a static default route.
	Gateway netip.Addr
	// Hostname, if set, is sent to the DHCP server and set as the host
	// name (from ip=).
	Hostname string
	// Source says where the plan came from, for messages: "config" or
	// "ip=".
	Source string
}

// planHostNet decides what the host address is: ip= on the kernel command
// line if given (and not ip=off) overrides the configuration's host entry.
// ok is false when there is nothing to configure. A bad ip= is returned as
// err alongside the configuration's plan, which still applies.
func planHostNet(cfg *config.Config, ipArg string) (plan hostPlan, ok bool, err error) {
	fromConfig := func() (hostPlan, bool) {
		h := cfg.Host
		if h == nil || (!h.DHCP && !h.Address.IsValid()) {
			return hostPlan{}, false
		}
		return hostPlan{Device: hostTap, DHCP: h.DHCP, Address: h.Address, Source: "config"}, true
	}
	if ipArg == "" {
		plan, ok = fromConfig()
		return plan, ok, nil
	}
	p, err := parseIPParam(ipArg)
	if err != nil || p.Off {
		plan, ok = fromConfig()
		return plan, ok, err
	}
	plan = hostPlan{Device: p.Device, DHCP: p.DHCP, Hostname: p.Hostname, Source: "ip="}
	if !p.DHCP {
		plan.Address, plan.Gateway = p.Address, p.Gateway
	}
	if plan.Device == "" {
		plan.Device = defaultIPDevice
		if cfg.Host != nil {
			plan.Device = hostTap
		}
	}
	return plan, true, nil
}

// startHostNet configures the appliance's management address as cfg and
// the ip= option ask, in the background, for as long as the appliance
// runs. Called once the switch is ready, since the host port is its tap.
func startHostNet(c *console, cfg *config.Config, args cmdline) {
	plan, ok, err := planHostNet(cfg, args.IP)
	if err != nil {
		c.Errorf("host address", err)
	}
	if !ok {
		return
	}
	h := &hostNet{plan: plan, printf: c.Printf, errorf: c.Errorf}
	goGuarded(c, "host address", func() { h.run(context.Background()) })
}

// hostNet keeps plan applied: it waits for the device, obtains and renews
// the lease (DHCP), and reapplies the address whenever the device lost it
// (recreated by a restarted switch, or changed by someone else).
type hostNet struct {
	plan   hostPlan
	printf func(format string, args ...any)
	errorf func(step string, err error)

	// renewAfter, when non-zero, replaces the lease's T1 as the time
	// until renewal: the tests' DHCP server leases for no less than a
	// minute.
	renewAfter time.Duration
	// dhcp tunes the client; the zero value is the production one.
	dhcp netconf.DHCPOptions
}

// Bounds of the wait between two DHCP attempts while no server answers.
const (
	hostRetryMin = time.Second
	hostRetryMax = 30 * time.Second
	// hostCheck is the longest hostNet sleeps without looking at the
	// device: a safety net for netlink notifications it may miss.
	hostCheck = 5 * time.Second
)

// hostState is hostNet's DHCP client state between iterations.
type hostState struct {
	lease   *netconf.Lease
	renewAt time.Time // next renewal attempt, zero when none is due
	retry   time.Duration
	next    time.Time // no new DISCOVER before then
	failing bool      // an error of the current streak was reported
	// index of the device the address was last applied to, 0 for none:
	// a new index is a new device, a restarted switch's tap.
	index   int
	waiting bool // "waiting for device" was printed
}

func (h *hostNet) run(ctx context.Context) {
	w, err := netconf.NewWatch()
	if err != nil {
		h.errorf("host address", fmt.Errorf("%w (checking every %s instead)", err, hostCheck))
	} else {
		defer w.Close()
	}
	if h.plan.Hostname != "" {
		if err := unix.Sethostname([]byte(h.plan.Hostname)); err != nil {
			h.errorf("host address", fmt.Errorf("hostname %s: %w", h.plan.Hostname, err))
		}
	}
	h.dhcp.Hostname = h.plan.Hostname
	st := &hostState{retry: hostRetryMin}
	for ctx.Err() == nil {
		wait := h.step(ctx, st, time.Now())
		if w == nil {
			sleep(ctx, wait)
			continue
		}
		// Wake early on any link or address change, and at least every
		// second to notice ctx.
		if _, err := w.Wait(min(wait, time.Second)); err != nil {
			h.errorf("host address", err)
			w.Close()
			w = nil
		}
	}
}

// step does what is due at now and returns how long to wait before the
// next step at the latest.
func (h *hostNet) step(ctx context.Context, st *hostState, now time.Time) time.Duration {
	dev := h.plan.Device
	if _, err := net.InterfaceByName(dev); err != nil {
		if !st.waiting {
			h.printf("host address: waiting for %s", dev)
			st.waiting = true
		}
		return hostCheck
	}
	st.waiting = false
	changed := false
	if h.plan.DHCP {
		if st.lease != nil && !st.lease.Expiry.IsZero() && !now.Before(st.lease.Expiry) {
			h.drop(st, "lease expired")
		}
		if st.lease == nil {
			if now.Before(st.next) {
				return st.next.Sub(now)
			}
			l, err := netconf.RequestLease(ctx, dev, h.dhcp)
			if err != nil {
				h.failed(st, err)
				d := st.retry
				st.next = time.Now().Add(d)
				st.retry = min(2*d, hostRetryMax)
				return d
			}
			st.lease, st.failing, st.retry, changed = l, false, hostRetryMin, true
			st.renewAt = h.renewal(l, time.Now())
		} else if !st.renewAt.IsZero() && !now.Before(st.renewAt) {
			l, err := st.lease.Renew(ctx, dev, h.dhcp)
			switch {
			case errors.Is(err, netconf.ErrNak):
				h.drop(st, "lease refused by the server")
				return 0
			case err != nil:
				h.failed(st, err)
				// Try again halfway to expiry, RFC 2131 4.4.5's
				// advice, within sane bounds.
				st.renewAt = time.Now().Add(min(max(st.lease.Expiry.Sub(time.Now())/2, hostRetryMin), time.Minute))
			default:
				changed = l.Address != st.lease.Address || l.Router != st.lease.Router
				st.lease, st.failing = l, false
				st.renewAt = h.renewal(l, time.Now())
			}
		}
	}
	want := h.plan.Address
	if st.lease != nil {
		want = st.lease.Address
	}
	index, has, err := netconf.HasAddress(dev, want)
	if err != nil {
		h.failed(st, err)
		return hostRetryMin
	}
	if changed || !has || index != st.index {
		if err := h.apply(st); err != nil {
			h.failed(st, err)
			return hostRetryMin
		}
		st.index, st.failing = index, false
	}
	wait := hostCheck
	if !st.renewAt.IsZero() {
		wait = min(wait, max(st.renewAt.Sub(time.Now()), 0))
	}
	return wait
}

// apply puts the plan's static address or st's lease on the device and
// says so on the console.
func (h *hostNet) apply(st *hostState) error {
	dev := h.plan.Device
	addr, router, how := h.plan.Address, h.plan.Gateway, "static"
	if st.lease != nil {
		addr, router, how = st.lease.Address, st.lease.Router, "dhcp"
		if err := st.lease.Apply(dev); err != nil {
			return err
		}
	} else {
		if err := netconf.SetAddress(dev, addr); err != nil {
			return err
		}
		if router.IsValid() {
			if err := netconf.SetDefaultRoute(router); err != nil {
				return fmt.Errorf("%s: %w", dev, err)
			}
		}
	}
	r := "none"
	if router.IsValid() {
		r = router.String()
	}
	h.printf("host address %s router %s (%s)", addr, r, how)
	return nil
}

// renewal is when to renew l, obtained at now.
func (h *hostNet) renewal(l *netconf.Lease, now time.Time) time.Time {
	if l.T1.IsZero() {
		return time.Time{} // infinite lease
	}
	if h.renewAfter > 0 {
		return now.Add(h.renewAfter)
	}
	return l.T1
}

// drop removes a lease that no longer holds, and its address.
func (h *hostNet) drop(st *hostState, why string) {
	h.printf("host address %s: %s, removed", st.lease.Address, why)
	if err := netconf.ClearAddress(h.plan.Device); err != nil {
		h.errorf("host address", err)
	}
	st.lease, st.renewAt, st.index = nil, time.Time{}, 0
}

// failed reports the first error of a streak as an error and keeps quiet
// about the retries that follow, so that a missing DHCP server shows once
// rather than flooding the console. The device going away under our feet
// (the switch stopping or restarting) is no error at all: the next step
// waits for it.
func (h *hostNet) failed(st *hostState, err error) {
	if _, gone := net.InterfaceByName(h.plan.Device); gone != nil {
		return
	}
	if !st.failing {
		h.errorf("host address", err)
		st.failing = true
	}
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
