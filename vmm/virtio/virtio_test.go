package virtio

import (
	"errors"
	"testing"
)

func TestCheckFeatures(t *testing.T) {
	const devBit = 1 << 6 // some device-specific feature
	offered := FeatureVersion1 | FeaturesQueue | devBit
	for _, tc := range []struct {
		name  string
		acked uint64
		ok    bool
	}{
		{"everything offered", offered, true},
		{"version 1 only", FeatureVersion1, true},
		{"legacy driver", FeaturesQueue | devBit, false},
		{"nothing", 0, false},
		{"packed ring not offered", FeatureVersion1 | FeatureRingPacked, false},
		{"unknown device bit", FeatureVersion1 | 1<<3, false},
		{"access platform not offered", FeatureVersion1 | FeatureAccessPlatform, false},
	} {
		err := CheckFeatures(offered, tc.acked)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrFeatures)) {
			t.Errorf("%s: CheckFeatures(%#x, %#x) = %v, want ok=%v", tc.name, offered, tc.acked, err, tc.ok)
		}
	}
}
