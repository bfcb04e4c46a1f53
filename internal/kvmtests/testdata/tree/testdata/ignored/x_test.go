package ignored

func TestIgnored(t *testing.T) { testenv.NeedKVM(t) }
