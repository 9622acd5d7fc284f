package main

// CDI for the CRI: kubelet passes a DRA driver's CDI device names in
// ContainerConfig.CDIDevices ("vendor/class=device"); a runtime such as
// containerd resolves them against the spec files in its CDI directories and
// applies their container edits. This does the same for the parts a local
// process can take: environment variables are set on the process; device
// nodes and mounts are recorded (<seq>-<container id>.cdi.json), like
// kubelet's own mounts. An unresolvable name fails CreateContainer, as
// containerd does.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

type cdiEdits struct {
	Env         []string          `json:"env,omitempty"`
	DeviceNodes []json.RawMessage `json:"deviceNodes,omitempty"`
	Mounts      []json.RawMessage `json:"mounts,omitempty"`
}

type cdiSpec struct {
	CDIVersion     string   `json:"cdiVersion"`
	Kind           string   `json:"kind"`
	ContainerEdits cdiEdits `json:"containerEdits"`
	Devices        []struct {
		Name           string   `json:"name"`
		ContainerEdits cdiEdits `json:"containerEdits"`
	} `json:"devices"`
}

// cdiResolved is what the named devices add to a container, in the order
// the names came (spec-wide edits once per spec, before its devices').
type cdiResolved struct {
	Devices []string `json:"devices"`
	cdiEdits
}

func (e *cdiEdits) add(o cdiEdits) {
	e.Env = append(e.Env, o.Env...)
	e.DeviceNodes = append(e.DeviceNodes, o.DeviceNodes...)
	e.Mounts = append(e.Mounts, o.Mounts...)
}

// resolveCDI reads every *.json spec in dir and resolves names against them.
func resolveCDI(dir string, names []string) (*cdiResolved, error) {
	if len(names) == 0 {
		return nil, nil
	}
	if dir == "" {
		return nil, fmt.Errorf("CDI devices %v requested but the runtime has no --cdi-dir", names)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var specs []cdiSpec
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("CDI spec %s: %v", f, err)
		}
		var s cdiSpec
		if err := json.Unmarshal(body, &s); err != nil {
			return nil, fmt.Errorf("CDI spec %s: %v", f, err)
		}
		specs = append(specs, s)
	}
	out := &cdiResolved{Devices: names}
	seenSpec := map[int]bool{}
	for _, name := range names {
		kind, device, ok := strings.Cut(name, "=")
		if !ok || kind == "" || device == "" {
			return nil, fmt.Errorf("CDI device %q: not of the form vendor/class=name", name)
		}
		found := false
		for i, s := range specs {
			if s.Kind != kind {
				continue
			}
			for _, d := range s.Devices {
				if d.Name != device {
					continue
				}
				if !seenSpec[i] {
					out.add(s.ContainerEdits)
					seenSpec[i] = true
				}
				out.add(d.ContainerEdits)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unresolvable CDI device %q (no spec in %s names it)", name, dir)
		}
	}
	return out, nil
}
