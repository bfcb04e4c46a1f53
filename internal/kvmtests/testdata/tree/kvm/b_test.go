package kvm

import "testing"

func BenchmarkExit(b *testing.B) { newVM(b) }

func BenchmarkPure(b *testing.B) {}
