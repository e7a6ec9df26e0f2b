package harness

// LockKubeletStarts lets the tests change the device-plugin directory while no kubelet starts.
var LockKubeletStarts = lockKubeletStarts
