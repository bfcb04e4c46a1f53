// Package nvme sends the few NVMe admin commands the appliance needs to
// give SR-IOV virtual functions of an NVMe controller to VMs: identify the
// controller and its secondary controllers, assign them queue and
// interrupt resources and bring them online (Virtualization Management),
// and attach namespaces to them. The commands go through the Linux NVMe
// driver's admin passthrough ioctl on the physical function's character
// device (/dev/nvmeN), so nothing but the kernel is needed (no nvme-cli).
//
// What the controller answers is parsed defensively: a controller's data
// is a device's, and a buggy or emulated one may claim anything.
package nvme

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Admin command opcodes (NVMe base specification, "Admin Command Set").
const (
	opIdentify        = 0x06
	opNSAttachment    = 0x15
	opVirtualizeMgmt  = 0x1c
	identifyCtrl      = 0x01 // CNS: the controller's Identify Controller data
	identifySecondary = 0x15 // CNS: the Secondary Controller List
	identifyPrimary   = 0x14 // CNS: the Primary Controller Capabilities
)

// passthru is the kernel's struct nvme_passthru_cmd (linux/nvme_ioctl.h).
type passthru struct {
	opcode      uint8
	flags       uint8
	rsvd1       uint16
	nsid        uint32
	cdw2, cdw3  uint32
	metadata    uint64
	addr        uint64
	metadataLen uint32
	dataLen     uint32
	cdw10       uint32
	cdw11       uint32
	cdw12       uint32
	cdw13       uint32
	cdw14       uint32
	cdw15       uint32
	timeoutMs   uint32
	result      uint32
}

// ioctlAdminCmd is NVME_IOCTL_ADMIN_CMD, _IOWR('N', 0x41, struct
// nvme_admin_cmd).
const ioctlAdminCmd = 3<<30 | uint32(unsafe.Sizeof(passthru{}))<<16 | 'N'<<8 | 0x41

// StatusError is a command the controller completed with an error status.
type StatusError struct {
	Op     string
	Status uint16 // the completion's status field (SCT and SC)
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("nvme %s: controller status %#x", e.Op, e.Status)
}

// Controller is an NVMe controller's character device.
type Controller struct {
	f *os.File
}

// Open opens the controller's character device, such as /dev/nvme0.
func Open(path string) (*Controller, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &Controller{f: f}, nil
}

// Close closes the device.
func (c *Controller) Close() error { return c.f.Close() }

// admin sends one admin command; data, if any, is its data buffer (in or
// out, as the opcode says).
func (c *Controller) admin(op string, cmd *passthru, data []byte) error {
	if len(data) > 0 {
		cmd.addr = uint64(uintptr(unsafe.Pointer(&data[0])))
		cmd.dataLen = uint32(len(data))
	}
	conn, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var r uintptr
	var errno unix.Errno
	cerr := conn.Control(func(fd uintptr) {
		r, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(ioctlAdminCmd), uintptr(unsafe.Pointer(cmd)))
	})
	if cerr != nil {
		return cerr
	}
	if errno != 0 {
		return fmt.Errorf("nvme %s: %w", op, errno)
	}
	if r != 0 {
		return &StatusError{Op: op, Status: uint16(r)}
	}
	return nil
}

// identify reads one 4 KiB Identify data structure.
func (c *Controller) identify(cns uint8, cntid uint16, nsid uint32) ([]byte, error) {
	buf := make([]byte, 4096)
	cmd := passthru{opcode: opIdentify, nsid: nsid, cdw10: uint32(cntid)<<16 | uint32(cns)}
	if err := c.admin(fmt.Sprintf("identify (CNS %#x)", cns), &cmd, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// ID reads the controller's own controller identifier (CNTLID).
func (c *Controller) ID() (uint16, error) {
	b, err := c.identify(identifyCtrl, 0, 0)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b[78:]), nil
}

// Primary is what a primary controller can give its secondaries.
type Primary struct {
	// FlexibleVQ and FlexibleVI are the flexible queue and interrupt
	// resources (VQFRT, VIFRT) for secondary controllers to share.
	FlexibleVQ, FlexibleVI uint32
	// MaxVQPerSecondary and MaxVIPerSecondary bound one secondary's
	// (VQFRSM, VIFRSM).
	MaxVQPerSecondary, MaxVIPerSecondary uint16
}

// PrimaryCapabilities reads the Primary Controller Capabilities: an error
// for a controller that is not an SR-IOV primary.
func (c *Controller) PrimaryCapabilities() (Primary, error) {
	b, err := c.identify(identifyPrimary, 0, 0)
	if err != nil {
		return Primary{}, err
	}
	le := binary.LittleEndian
	return Primary{
		FlexibleVQ:        le.Uint32(b[32:]),
		MaxVQPerSecondary: le.Uint16(b[44:]),
		FlexibleVI:        le.Uint32(b[64:]),
		MaxVIPerSecondary: le.Uint16(b[76:]),
	}, nil
}

// Secondary is one entry of the Secondary Controller List.
type Secondary struct {
	ID      uint16 // SCID: its controller identifier
	Primary uint16 // PCID
	Online  bool
	VF      uint16 // its virtual function's number, from 1; 0: none
	VQ, VI  uint16 // queue and interrupt resources assigned
}

// Secondaries reads the Secondary Controller List.
func (c *Controller) Secondaries() ([]Secondary, error) {
	b, err := c.identify(identifySecondary, 0, 0)
	if err != nil {
		return nil, err
	}
	return parseSecondaries(b), nil
}

// parseSecondaries reads a Secondary Controller List: a count in its first
// byte, then entries of 32 bytes from byte 32. A count past the buffer's
// end is cut to what it holds (127 entries).
func parseSecondaries(b []byte) []Secondary {
	if len(b) < 32 {
		return nil
	}
	n := int(b[0])
	if max := (len(b) - 32) / 32; n > max {
		n = max
	}
	le := binary.LittleEndian
	out := make([]Secondary, 0, n)
	for i := range n {
		e := b[32+32*i : 64+32*i]
		out = append(out, Secondary{
			ID: le.Uint16(e[0:]), Primary: le.Uint16(e[2:]), Online: e[4]&1 != 0,
			VF: le.Uint16(e[8:]), VQ: le.Uint16(e[10:]), VI: le.Uint16(e[12:]),
		})
	}
	return out
}

// Resource kinds of Virtualization Management.
const (
	ResourceVQ = 0 // queues (a submission and a completion queue each)
	ResourceVI = 1 // interrupt vectors
)

// Virtualization Management actions.
const (
	actOffline = 0x7
	actAssign  = 0x8
	actOnline  = 0x9
)

func (c *Controller) virtMgmt(op string, act uint8, rt uint8, cntlid uint16, n uint16) error {
	cmd := passthru{opcode: opVirtualizeMgmt, cdw10: uint32(cntlid)<<16 | uint32(rt)<<8 | uint32(act), cdw11: uint32(n)}
	return c.admin(op, &cmd, nil)
}

// Offline takes secondary controller id offline (its resources can then be
// changed).
func (c *Controller) Offline(id uint16) error {
	return c.virtMgmt(fmt.Sprintf("secondary %d offline", id), actOffline, 0, id, 0)
}

// Assign gives secondary controller id n flexible resources of kind rt
// (ResourceVQ or ResourceVI); it must be offline.
func (c *Controller) Assign(id uint16, rt uint8, n uint16) error {
	return c.virtMgmt(fmt.Sprintf("secondary %d assign %d of resource %d", id, n, rt), actAssign, rt, id, n)
}

// Online brings secondary controller id online; its VF must be enabled.
func (c *Controller) Online(id uint16) error {
	return c.virtMgmt(fmt.Sprintf("secondary %d online", id), actOnline, 0, id, 0)
}

// Attach attaches namespace nsid to the controllers ids (Namespace
// Attachment, select 0). Detach undoes it (select 1).
func (c *Controller) Attach(nsid uint32, ids ...uint16) error { return c.nsAttach(nsid, 0, ids) }

// Detach detaches namespace nsid from the controllers ids.
func (c *Controller) Detach(nsid uint32, ids ...uint16) error { return c.nsAttach(nsid, 1, ids) }

func (c *Controller) nsAttach(nsid uint32, sel uint32, ids []uint16) error {
	if len(ids) == 0 || len(ids) > 2047 {
		return fmt.Errorf("nvme: namespace attachment of %d controllers", len(ids))
	}
	buf := make([]byte, 4096)
	binary.LittleEndian.PutUint16(buf, uint16(len(ids)))
	for i, id := range ids {
		binary.LittleEndian.PutUint16(buf[2+2*i:], id)
	}
	cmd := passthru{opcode: opNSAttachment, nsid: nsid, cdw10: sel}
	what := "attach"
	if sel == 1 {
		what = "detach"
	}
	return c.admin(fmt.Sprintf("namespace %d %s %v", nsid, what, ids), &cmd, buf)
}
