// The peer VMM of the boot benchmark, pinned in a module of its own so that
// it stays out of the product's module graph: tools/mkimage -bench builds it
// from here (go -C tools/gokvm build github.com/bobuhiro11/gokvm).
module github.com/hyperroot/hyperroot/tools/gokvm

go 1.26.8

tool github.com/bobuhiro11/gokvm

require github.com/bobuhiro11/gokvm v0.0.8-0.20231003020000-f53faca69d28 // indirect

require (
	github.com/alecthomas/kong v0.8.0 // indirect
	golang.org/x/arch v0.2.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
