package acpi

import (
	"encoding/binary"
	"fmt"
)

// NUMANode is one node of a guest's virtual NUMA topology: proximity
// domain i of the SRAT is Config.NUMA[i].
type NUMANode struct {
	CPUs   []int       // the vCPUs (APIC IDs) on it
	Memory [][2]uint64 // its guest-physical RAM ranges, [start, end)
	// Distance, when not nil, is this node's row of the SLIT: its
	// distance to each node, itself included (10, by the
	// specification); nil gives every node the default row (10 to
	// itself, 20 to the others). Either every node has one or none.
	Distance []uint8
}

// Revisions of the NUMA tables (ACPI 6.4).
const (
	sratRevision = 3
	slitRevision = 1
)

// SRAT structure types and flags.
const (
	sratLocalAPIC   = 0
	sratMemory      = 1
	sratLocalX2APIC = 2
	sratEnabled     = 1
)

// Distances in the SLIT: 10 means local, by the specification; 20 is
// what a remote node costs on a typical two-socket host (and what QEMU
// gives by default).
const (
	localDistance  = 10
	remoteDistance = 20
)

// checkNUMA makes sure nodes describe a machine of cpus vCPUs: every
// vCPU on exactly one node, every node with some RAM.
func checkNUMA(nodes []NUMANode, cpus int) error {
	if len(nodes) == 0 {
		return nil
	}
	if len(nodes) > 255 {
		return fmt.Errorf("%d NUMA nodes (the SLIT holds at most 255)", len(nodes))
	}
	seen := make([]bool, cpus)
	for i, n := range nodes {
		if len(n.Memory) == 0 {
			return fmt.Errorf("NUMA node %d has no memory", i)
		}
		for _, r := range n.Memory {
			if r[1] <= r[0] {
				return fmt.Errorf("NUMA node %d: empty memory range %#x-%#x", i, r[0], r[1])
			}
		}
		for _, c := range n.CPUs {
			if c < 0 || c >= cpus {
				return fmt.Errorf("NUMA node %d: vCPU %d of %d", i, c, cpus)
			}
			if seen[c] {
				return fmt.Errorf("NUMA node %d: vCPU %d is on two nodes", i, c)
			}
			seen[c] = true
		}
	}
	for c, ok := range seen {
		if !ok {
			return fmt.Errorf("vCPU %d is on no NUMA node", c)
		}
	}
	return checkDistances(nodes)
}

// checkDistances holds the SLIT rows to what Linux accepts (a table it
// rejects is ignored whole): 10 from a node to itself, 11 to 254 to any
// other (255 is "unreachable").
func checkDistances(nodes []NUMANode) error {
	given := 0
	for _, n := range nodes {
		if n.Distance != nil {
			given++
		}
	}
	if given == 0 {
		return nil
	}
	if given != len(nodes) {
		return fmt.Errorf("NUMA distances given for %d of %d nodes", given, len(nodes))
	}
	for i, n := range nodes {
		if len(n.Distance) != len(nodes) {
			return fmt.Errorf("NUMA node %d: %d distances for %d nodes", i, len(n.Distance), len(nodes))
		}
		for j, d := range n.Distance {
			switch {
			case i == j && d != localDistance:
				return fmt.Errorf("NUMA node %d: distance %d to itself, want %d", i, d, localDistance)
			case i != j && (d <= localDistance || d == 255):
				return fmt.Errorf("NUMA node %d: distance %d to node %d, want %d to 254", i, d, j, localDistance+1)
			}
		}
	}
	return nil
}

// srat is the System Resource Affinity Table: which proximity domain
// (node) each vCPU and each RAM range belongs to. vCPUs past the xAPIC
// range get x2APIC entries, as in the MADT.
func srat(nodes []NUMANode) []byte {
	le := binary.LittleEndian
	b := newTable("SRAT", sratRevision, headerLen+12)
	le.PutUint32(b[headerLen:], 1) // reserved, must be 1
	for dom, n := range nodes {
		for _, c := range n.CPUs {
			if c <= maxXAPICID {
				e := make([]byte, 16)
				e[0], e[1] = sratLocalAPIC, 16
				e[2] = byte(dom) // proximity domain [7:0]
				e[3] = byte(c)   // APIC ID
				le.PutUint32(e[4:], sratEnabled)
				e[9], e[10], e[11] = byte(dom>>8), byte(dom>>16), byte(dom>>24) // domain [31:8]
				b = append(b, e...)
				continue
			}
			e := make([]byte, 24)
			e[0], e[1] = sratLocalX2APIC, 24
			le.PutUint32(e[4:], uint32(dom))
			le.PutUint32(e[8:], uint32(c))
			le.PutUint32(e[12:], sratEnabled)
			b = append(b, e...)
		}
		for _, r := range n.Memory {
			e := make([]byte, 40)
			e[0], e[1] = sratMemory, 40
			le.PutUint32(e[2:], uint32(dom))
			le.PutUint64(e[8:], r[0])
			le.PutUint64(e[16:], r[1]-r[0])
			le.PutUint32(e[28:], sratEnabled)
			b = append(b, e...)
		}
	}
	return seal(b)
}

// slit is the System Locality Information Table: the relative distance
// between every two nodes, as the nodes give it or by default.
func slit(nodes []NUMANode) []byte {
	b := newTable("SLIT", slitRevision, headerLen+8)
	binary.LittleEndian.PutUint64(b[headerLen:], uint64(len(nodes)))
	for i, n := range nodes {
		if n.Distance != nil {
			b = append(b, n.Distance...)
			continue
		}
		for j := range nodes {
			d := byte(remoteDistance)
			if i == j {
				d = localDistance
			}
			b = append(b, d)
		}
	}
	return seal(b)
}
