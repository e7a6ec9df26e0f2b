package auth

import "testing"

func TestMatchesRegistry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		serverAddress string
		registry      string
		want          bool
	}{
		{"same host", "registry.example.com", "registry.example.com", true},
		{"https scheme", "https://registry.example.com", "registry.example.com", true},
		{"http scheme and path", "http://registry.example.com/v2/", "registry.example.com", true},
		{"case", "Registry.Example.com", "registry.example.com", true},
		{"with port", "registry.example.com:5000", "registry.example.com:5000", true},
		{"IPv6", "https://[::1]:5000/v2/", "[::1]:5000", true},

		{"docker login address", "https://index.docker.io/v1/", "docker.io", true},
		{"index.docker.io", "index.docker.io", "docker.io", true},
		{"registry-1.docker.io", "registry-1.docker.io", "docker.io", true},
		{"docker.io", "docker.io", "docker.io", true},
		{"Docker Hub alias as registry", "docker.io", "index.docker.io", true},

		{"empty address", "", "registry.example.com", false},
		{"empty both", "", "", false},
		{"other host", "other.example.com", "registry.example.com", false},
		{"look-alike suffix", "registry.example.com.evil.io", "registry.example.com", false},
		{"look-alike shorter", "registry.example.com", "registry.example.com.evil.io", false},
		{"look-alike prefix", "evilregistry.example.com", "registry.example.com", false},
		{"host in a path", "https://evil.com/registry.example.com", "registry.example.com", false},
		{"userinfo", "https://registry.example.com@evil.com", "registry.example.com", false},
		{"port differs", "registry.example.com:5000", "registry.example.com", false},
		{"port missing", "registry.example.com", "registry.example.com:5000", false},
		{"Docker Hub is not another host", "https://index.docker.io/v1/", "registry.example.com", false},
		{"not Docker Hub", "docker.io.evil.io", "docker.io", false},
		{"no globs", "*.example.com", "registry.example.com", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := MatchesRegistry(tt.serverAddress, tt.registry); got != tt.want {
				t.Errorf("MatchesRegistry(%q, %q) = %t, want %t", tt.serverAddress, tt.registry, got, tt.want)
			}
		})
	}
}
