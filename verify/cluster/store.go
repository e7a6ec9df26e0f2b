package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// StateFile is where, in the state directory, a node keeps the objects it last applied, to
// enforce them from start until the API server answers.
const StateFile = "cluster-policy.json"

type saved struct {
	Objects []Applied `json:"objects"`
}

// Save writes the applied objects to dir, whole or not at all.
func Save(dir string, applied []Applied) error {
	b, err := json.Marshal(saved{Objects: applied})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, StateFile+".*")
	if err != nil {
		return fmt.Errorf("save cluster policy: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save cluster policy: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save cluster policy: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save cluster policy: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("save cluster policy: %w", err)
	}
	return nil
}

// Load reads what Save wrote; none saved yet is no objects.
func Load(dir string) ([]Applied, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load cluster policy: %w", err)
	}
	var s saved
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("load cluster policy from %s: %w", filepath.Join(dir, StateFile), err)
	}
	return s.Objects, nil
}
