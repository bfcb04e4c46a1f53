package vhostuser

import (
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/hyperroot/hyperroot/internal/testenv"
)

// TestQEMUHandshake lets a real, independent frontend connect: QEMU's
// vhost-user netdev negotiates with the backend at startup (before any
// guest runs, hence -S and no kernel), and refuses to start when the
// backend answers wrongly.
func TestQEMUHandshake(t *testing.T) {
	qemu := testenv.NeedTool(t, "qemu-system-x86_64", "qemu-system-x86")
	dev := newEcho()
	var mu sync.Mutex
	seen := map[Request]int{}
	s := newTracedServer(t, dev, func(h Header) {
		mu.Lock()
		seen[h.Request]++
		mu.Unlock()
	})
	// The handshake QEMU 7.2 performs for a virtio-net-pci on vhost-user
	// before the guest's driver shows up.
	want := []Request{GetFeatures, GetProtocolFeatures, SetProtocolFeatures, GetQueueNum, SetOwner, SetVringCall}
	complete := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range want {
			if seen[r] == 0 {
				return false
			}
		}
		return true
	}

	var stderr testenv.Buffer
	cmd := exec.Command(qemu, "-accel", "tcg", "-M", "q35", "-nodefaults", "-nographic", "-m", "64",
		"-object", "memory-backend-memfd,id=m,size=64M,share=on", "-numa", "node,memdev=m",
		"-chardev", "socket,id=c,path="+s.path, "-netdev", "vhost-user,id=n,chardev=c",
		"-device", "virtio-net-pci,netdev=n", "-S", "-display", "none", "-monitor", "none", "-serial", "none")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()

	deadline := time.After(30 * time.Second)
	for !complete() {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("QEMU exited during the handshake (%v): %s", err, stderr.String())
		case <-deadline:
			t.Fatalf("handshake incomplete after 30s; QEMU said: %s", stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	// QEMU is satisfied: it stays up, paused, holding the connection.
	select {
	case err := <-exited:
		exited <- err
		t.Fatalf("QEMU exited after the handshake (%v): %s", err, stderr.String())
	case <-time.After(200 * time.Millisecond):
	}
	select {
	case err := <-s.serveErrs:
		t.Fatalf("Serve returned while QEMU was connected: %v", err)
	default:
	}
	if f := dev.refusals(); len(f) != 0 {
		t.Errorf("the backend refused QEMU's requests %v", f)
	}
	cmd.Process.Kill()
	if err := s.served(t); err != nil {
		t.Fatalf("Serve after QEMU died: %v", err)
	}
	mu.Lock()
	t.Logf("QEMU's startup requests: %v", seen)
	mu.Unlock()
}
