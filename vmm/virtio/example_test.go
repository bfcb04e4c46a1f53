package virtio_test

import (
	"fmt"
	"io"

	"github.com/hyperroot/hyperroot/vmm/virtio"
	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// Example shows a device's worker serving a queue: pop, walk, copy, push,
// notify, and re-enable notifications before sleeping. The driver's side
// (the ring and a request on it) is played by package virtiotest.
func Example() {
	mem := virtiotest.NewRAM(0x10000)
	drv, err := virtiotest.NewDriver(mem, virtiotest.Contiguous(0x1000, 8))
	if err != nil {
		fmt.Println(err)
		return
	}
	copy(mem.Bytes(0x8000, 5), "hello")
	drv.Post(virtiotest.Buf{Addr: 0x8000, Len: 5}, virtiotest.Buf{Addr: 0x8100, Len: 5, Write: true})

	// What the transport does when the driver sets DRIVER_OK.
	q, _ := virtio.NewQueue(8)
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = drv.Desc, drv.Avail, drv.Used, true
	if err := q.Activate(mem, virtio.FeatureVersion1|virtio.FeatureRingEventIdx); err != nil {
		fmt.Println(err)
		return
	}

	var c virtio.Chain // one per request in flight; reused, so no allocation
	for {
		q.DisableNotifications()
		for {
			head, ok, err := q.Pop()
			if err != nil {
				fmt.Println("set DEVICE_NEEDS_RESET:", err)
				return
			}
			if !ok {
				break
			}
			if err := q.Walk(head, &c); err != nil {
				// A bad request: complete it so the driver gets its
				// descriptors back (a real device writes an error status).
				q.Push(head, 0)
				continue
			}
			msg, _ := io.ReadAll(&c)
			fmt.Printf("request %q\n", msg)
			c.Write([]byte("world"))
			q.Push(head, c.Written())
		}
		if q.NeedInterrupt() {
			fmt.Println("interrupt") // Interrupt.Used(queue index)
		}
		if !q.EnableNotifications() {
			break // sleep until the driver notifies
		}
	}
	used, _ := drv.Reap(nil)
	fmt.Printf("used %+v, response %q\n", used, mem.Bytes(0x8100, 5))
	// Output:
	// request "hello"
	// interrupt
	// used [{Head:0 Len:5}], response "world"
}
