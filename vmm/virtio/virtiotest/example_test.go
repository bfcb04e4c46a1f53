package virtiotest_test

import (
	"fmt"

	"github.com/hyperroot/hyperroot/vmm/virtio/virtiotest"
)

// A test posts a request, lets the device under test serve it (here the
// test writes the used entry itself), and reaps the answer.
func Example() {
	ram := virtiotest.NewRAM(0x10000)
	drv, err := virtiotest.NewDriver(ram, virtiotest.Contiguous(0x1000, 8))
	if err != nil {
		fmt.Println(err)
		return
	}
	copy(ram.Bytes(0x8000, 5), "hello")
	head, _ := drv.Post(
		virtiotest.Buf{Addr: 0x8000, Len: 5},
		virtiotest.Buf{Addr: 0x8100, Len: 5, Write: true},
	)
	// The device: program a queue from drv.Layout, Pop, Walk, Push. Here:
	copy(ram.Bytes(0x8100, 5), "world")
	drv.SetUsedElem(0, uint32(head), 5)
	drv.SetUsedIdx(1)

	used, _ := drv.Reap(nil)
	fmt.Printf("%+v %q\n", used, ram.Bytes(0x8100, uint64(used[0].Len)))
	// Output: [{Head:0 Len:5}] "world"
}
