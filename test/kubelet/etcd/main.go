// Command etcd is a single-member etcd for the end-to-end tests' control plane, built from
// go.etcd.io/etcd/server/v3/embed at the version k8s.io/kubernetes requires (this module's
// go.mod). It serves plain HTTP on the loopback URLs it is given, until SIGINT or SIGTERM.
//
//	etcd --data-dir DIR --listen-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("etcd: ")
	var (
		name       = flag.String("name", "default", "member name")
		dataDir    = flag.String("data-dir", "", "data directory (required)")
		clientURLs = flag.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated loopback URLs for clients, also advertised")
		peerURLs   = flag.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated loopback URLs for peers, also advertised")
		noFsync    = flag.Bool("unsafe-no-fsync", false, "do not fsync: faster, loses data on a crash (for tests)")
		logLevel   = flag.String("log-level", "warn", "debug, info, warn or error")
		timeout    = flag.Duration("start-timeout", time.Minute, "how long the member may take to be ready")
	)
	flag.Parse()
	if *dataDir == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	clients, err := loopbackURLs(*clientURLs)
	if err != nil {
		log.Fatalf("--listen-client-urls: %v", err)
	}
	peers, err := loopbackURLs(*peerURLs)
	if err != nil {
		log.Fatalf("--listen-peer-urls: %v", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = clients, clients
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = peers, peers
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = *noFsync
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		log.Printf("ready, serving clients on %s", *clientURLs)
	case <-time.After(*timeout):
		e.Server.Stop()
		log.Fatalf("not ready after %v", *timeout)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		log.Printf("%v: stopping", s)
	case err := <-e.Err():
		log.Fatal(err)
	}
}

// loopbackURLs parses a comma-separated list of URLs whose hosts are loopback addresses: the
// tests' etcd has no authentication, so it must not be reachable from elsewhere.
func loopbackURLs(s string) ([]url.URL, error) {
	var urls []url.URL
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		host := u.Hostname()
		if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" {
			return nil, fmt.Errorf("%s: not a loopback address", u)
		}
		urls = append(urls, *u)
	}
	return urls, nil
}
