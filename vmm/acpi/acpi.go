// Package acpi builds the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT, MCFG,
// and SRAT and SLIT for a virtual NUMA topology) that describe hyperroot's x86-64 machine to the guest.
//
// The platform is "hardware-reduced" ACPI: no PM timer, GPE or PM1 register
// blocks and no SMI, so the VMM emulates only a reset port, two sleep
// registers and a generic event device (GED) for the power button. Every
// table is laid out in one blob that the VMM copies to layout.ACPIStart, in
// the legacy BIOS area where Linux's RSDP scan also finds it.
package acpi

import (
	"errors"
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/acpi/aml"
	"github.com/hyperroot/hyperroot/vmm/layout"
)

// Config is what the tables describe. Its zero value (after setting CPUs)
// is a machine without PCI Express.
type Config struct {
	// CPUs is the number of vCPUs; vCPU i has APIC ID i.
	CPUs int
	// MCFG adds the MCFG table (ECAM at layout.ECAMStart, buses 0-layout.PCILastBus) and a
	// motherboard-resources device reserving that range.
	MCFG bool
	// Devices are extra objects placed in \_SB, e.g. a PCI host bridge
	// built with package aml.
	Devices []aml.Term
	// NUMA, when not empty, is the guest's virtual NUMA topology: SRAT
	// and SLIT tables describe it. Every vCPU must be on one node.
	NUMA []NUMANode
}

// MaxSize is the room for tables between layout.ACPIStart and layout.ACPIEnd.
const MaxSize = layout.ACPIEnd - layout.ACPIStart

// tableAlign keeps every table 16-byte aligned; the RSDP must be (the
// legacy scan looks at 16-byte boundaries), the others are for tidiness.
const tableAlign = 16

// Build returns the tables for cfg laid out in one blob meant to be copied
// to guest-physical layout.ACPIStart; every pointer inside is a
// guest-physical address. rsdpOffset is where the RSDP lies in the blob (add
// layout.ACPIStart for boot_params.acpi_rsdp_addr).
func Build(cfg Config) (blob []byte, rsdpOffset uint64, err error) {
	if cfg.CPUs < 1 {
		return nil, 0, fmt.Errorf("acpi: %d vCPUs", cfg.CPUs)
	}
	// A lower bound on the MADT size (8 bytes per vCPU), checked before building it so that
	// an absurd vCPU count fails without allocating gigabytes.
	if int64(cfg.CPUs)*8 > MaxSize {
		return nil, 0, fmt.Errorf("acpi: %d vCPUs do not fit in %d bytes of tables", cfg.CPUs, MaxSize)
	}

	if err := checkNUMA(cfg.NUMA, cfg.CPUs); err != nil {
		return nil, 0, fmt.Errorf("acpi: %w", err)
	}

	var w writer
	// RSDP first, at layout.ACPIStart itself; filled in last.
	rsdpOffset = w.reserve(36)

	d, err := dsdt(cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("acpi: build DSDT: %w", err)
	}
	dsdtAddr := w.place(d)
	tables := []uint64{
		w.place(fadt(dsdtAddr)),
		w.place(madt(cfg.CPUs)),
	}
	if cfg.MCFG {
		tables = append(tables, w.place(mcfg()))
	}
	if len(cfg.NUMA) > 0 {
		tables = append(tables, w.place(srat(cfg.NUMA)), w.place(slit(cfg.NUMA)))
	}
	xsdtAddr := w.place(xsdt(tables))
	copy(w.buf[rsdpOffset:], rsdp(xsdtAddr))

	if len(w.buf) > MaxSize {
		return nil, 0, fmt.Errorf("acpi: tables take %d bytes, only %d fit at %#x: %w",
			len(w.buf), MaxSize, layout.ACPIStart, ErrTooLarge)
	}
	return w.buf, rsdpOffset, nil
}

// ErrTooLarge reports tables that do not fit in [layout.ACPIStart, layout.ACPIEnd).
var ErrTooLarge = errors.New("ACPI tables too large")

// writer lays tables out one after another, aligned.
type writer struct{ buf []byte }

func (w *writer) reserve(n int) uint64 {
	for len(w.buf)%tableAlign != 0 {
		w.buf = append(w.buf, 0)
	}
	off := uint64(len(w.buf))
	w.buf = append(w.buf, make([]byte, n)...)
	return off
}

// place appends table and returns its guest-physical address.
func (w *writer) place(table []byte) uint64 {
	off := w.reserve(len(table))
	copy(w.buf[off:], table)
	return layout.ACPIStart + off
}
