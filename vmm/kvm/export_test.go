package kvm

// HoldingP reports whether v's next Run keeps its goroutine's P.
func HoldingP(v *VCPU) bool { return v.wait.Holding() }
