// Package metricstest reads /metrics as Prometheus does, for the tests of
// the appliance's metrics (init's and the end-to-end ones): its own text
// parser, and a metric's value by name and labels.
package metricstest

import (
	"io"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families is /metrics parsed: metric families by name.
type Families map[string]*dto.MetricFamily

// Parse parses the text format with Prometheus's parser.
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// Value is the value of family name's first metric with labels (name=value
// pairs; others may be there too), or -1 when there is none.
func (f Families) Value(name string, labels ...string) float64 {
	for _, m := range f[name].GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}

// hasLabels reports whether m has every name=value pair of labels.
func hasLabels(m *dto.Metric, labels []string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		if have[k] != v {
			return false
		}
	}
	return true
}

// Sum is the sum of family name's values (counters and gauges).
func (f Families) Sum(name string) float64 {
	var sum float64
	for _, m := range f[name].GetMetric() {
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}

// Histogram is family name's first histogram with labels, or nil.
func (f Families) Histogram(name string, labels ...string) *dto.Histogram {
	for _, m := range f[name].GetMetric() {
		if m.Histogram != nil && hasLabels(m, labels) {
			return m.Histogram
		}
	}
	return nil
}
