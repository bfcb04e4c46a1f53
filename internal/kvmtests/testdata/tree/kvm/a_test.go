package kvm

import (
	"testing"

	"example/testenv"
)

func newVM(t testing.TB) { testenv.NeedKVM(t) }

func withVM(t testing.TB) { newVM(t) }

func TestDirect(t *testing.T) { testenv.NeedKVM(t) }

func TestHelper(t *testing.T) { withVM(t) }

func TestClosure(t *testing.T) {
	t.Run("sub", func(t *testing.T) { newVM(t) })
}

func TestNoKVM(t *testing.T) { t.Log("pure") }

func Testlower(t *testing.T) { newVM(t) }
