package harness

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// DistributionBinary is Debian's docker-registry package's binary (CNCF Distribution).
const DistributionBinary = "/usr/bin/docker-registry"

// htpasswdCost is the bcrypt cost `htpasswd -B` uses by default.
const htpasswdCost = 5

// StartDistribution starts Debian's registry (CNCF Distribution) on a loopback port, plain
// HTTP, with htpasswd authentication for user: it checks the password's bcrypt hash on every
// request, as deployed registries do. The push helpers of the returned Registry work with it;
// its request counts do not (see the registry's own log).
func StartDistribution(t T, user, password string) *Registry {
	t.Helper()
	if !isExecutable(DistributionBinary) {
		Missing(t, DistributionBinary+" not found: apt-get install docker-registry")
	}
	dir, err := os.MkdirTemp("", "pullgate-distribution-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	hash, err := bcrypt.GenerateFromPassword([]byte(password), htpasswdCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	config := fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: %s}
  delete: {enabled: true}
http: {addr: %s}
auth:
  htpasswd: {realm: pullgate, path: %s}
`, filepath.Join(dir, "data"), addr, filepath.Join(dir, "htpasswd"))
	configFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(DistributionBinary, "serve", configFile)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
	})
	r := &Registry{Host: addr, URL: "http://" + addr, Username: user, Password: password}
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(r.URL + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logFile.Name())
			t.Fatalf("%s did not answer on %s within 30s: %v\n%s", DistributionBinary, addr, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
