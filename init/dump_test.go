package main

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSigCaught(t *testing.T) {
	status := "Name:\thyperroot\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000201\n"
	if !sigCaught(status, unix.SIGUSR1) { // bit 9
		t.Error("SIGUSR1 not caught in a Go process's mask")
	}
	if sigCaught(status, unix.SIGUSR2) || sigCaught("SigCgt:\t0000000000000000\n", unix.SIGUSR1) || sigCaught("", unix.SIGUSR1) ||
		sigCaught("SigCgt:\tzz\n", unix.SIGUSR1) {
		t.Error("caught where the mask says not")
	}
	// This test process is a Go program: its runtime catches SIGUSR1.
	if !catches(os.Getpid(), unix.SIGUSR1) {
		t.Error("this Go process does not catch SIGUSR1 by /proc")
	}
}
