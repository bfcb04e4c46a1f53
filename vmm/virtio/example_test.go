package virtio

import (
	"fmt"
	"io"
	"testing"
)

// Example shows a device's worker serving a queue: pop, walk, copy, push,
// notify, and re-enable notifications before sleeping. The driver's side
// (ring setup) is done by this package's test helper.
func Example() {
	mem := newFakeRAM(0, ramSize)
	d := newDriver(&testing.T{}, mem, 8, descAt, availAt, usedAt)
	d.setDesc(0, bufBase, 5, R|N, 1)
	d.setDesc(1, bufBase+0x100, 5, W, 0)
	b, _ := mem.Slice(bufBase, 5)
	copy(b, "hello")
	d.add(0)

	q, _ := NewQueue(8)
	q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready = descAt, availAt, usedAt, true
	if err := q.Activate(mem, FeatureVersion1|FeatureRingEventIdx); err != nil {
		fmt.Println(err)
		return
	}

	var c Chain // one per request in flight; reused, so no allocation
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
	r, _ := mem.Slice(bufBase+0x100, 5)
	fmt.Printf("used idx %d, response %q\n", d.usedIdx(), r)
	// Output:
	// request "hello"
	// interrupt
	// used idx 1, response "world"
}
