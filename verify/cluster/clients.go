package cluster

import (
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Clients are the API clients of kubeconfig, the node's own (kubelet's). A client certificate
// the kubeconfig names as files, as kubelet's does once it rotates its certificate
// (/var/lib/kubelet/pki/kubelet-client-current.pem), is followed: client-go reads the files at
// every new connection, and checks them every 5 minutes to close the connections made with a
// certificate kubelet has since renewed (at 70 to 90% of its life). So the kubeconfig is kept
// as files, never read into memory once.
func Clients(kubeconfig, userAgent string) (dynamic.Interface, kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	rc.UserAgent = userAgent
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	core, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return dyn, core, nil
}
