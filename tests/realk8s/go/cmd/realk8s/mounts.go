package main

// Mounts for the CRI's containers: kubelet's ContainerConfig.Mounts and
// Devices and the CDI edits' mounts and device nodes are applied in a
// private mount namespace of the container's process, as a runtime does, so
// that a container sees what kubelet and the drivers give it (a read-only
// /etc/ld.so.preload, the shim directory, the service account token) and
// nothing it was not given is written on the host.
//
// StartContainer starts `realk8s container-init SPEC -- ARGV` with
// CLONE_NEWNS; container-init makes every mount private, binds each source
// onto its target and execs the container's command. A target that does not
// exist is created without touching the host: its nearest existing directory
// is replaced, in the namespace only, by a tmpfs holding bind mounts of
// every entry it had (a "mirror"), where the new entry can then be made.
// A source that does not exist (a device node of a simulated card) is
// skipped. What was applied and skipped is written to the record directory
// as <container id>.mounts.json before the exec.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	rt "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// O_PATH (Linux; the syscall package does not name it): a handle on the mirrored directory that outlives the
// tmpfs mounted over it, so its entries stay reachable through /proc/self/fd.
const oPath = 0x200000

type bindMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly"`
	Origin   string `json:"origin"` // kubelet-mount, kubelet-device, cdi-mount, cdi-device
}

type initSpec struct {
	Mounts []bindMount `json:"mounts"`
	Env    []string    `json:"env"`
	Dir    string      `json:"dir"`
	Record string      `json:"record"`
}

type initRecord struct {
	Applied []bindMount `json:"applied"`
	Skipped []struct {
		bindMount
		Reason string `json:"reason"`
	} `json:"skipped"`
}

type cdiMount struct {
	HostPath      string   `json:"hostPath"`
	ContainerPath string   `json:"containerPath"`
	Options       []string `json:"options"`
}

type cdiDeviceNode struct {
	Path     string `json:"path"`
	HostPath string `json:"hostPath"`
}

// containerMounts lists, in order, what a container must get: kubelet's
// mounts and devices, then the CDI edits' mounts and device nodes.
func containerMounts(cfg *rt.ContainerConfig, cdi *cdiResolved) ([]bindMount, error) {
	var out []bindMount
	for _, m := range cfg.GetMounts() {
		out = append(out, bindMount{m.GetHostPath(), m.GetContainerPath(), m.GetReadonly(), "kubelet-mount"})
	}
	for _, d := range cfg.GetDevices() {
		out = append(out, bindMount{d.GetHostPath(), d.GetContainerPath(), !strings.Contains(d.GetPermissions(), "w"), "kubelet-device"})
	}
	if cdi != nil {
		for _, raw := range cdi.Mounts {
			var m cdiMount
			if err := json.Unmarshal(raw, &m); err != nil {
				return nil, fmt.Errorf("CDI mount %s: %v", raw, err)
			}
			ro := false
			for _, o := range m.Options {
				ro = ro || o == "ro"
			}
			out = append(out, bindMount{m.HostPath, m.ContainerPath, ro, "cdi-mount"})
		}
		for _, raw := range cdi.DeviceNodes {
			var d cdiDeviceNode
			if err := json.Unmarshal(raw, &d); err != nil {
				return nil, fmt.Errorf("CDI device node %s: %v", raw, err)
			}
			host := d.HostPath
			if host == "" {
				host = d.Path
			}
			out = append(out, bindMount{host, d.Path, false, "cdi-device"})
		}
	}
	for _, m := range out {
		if !filepath.IsAbs(m.Target) || !filepath.IsAbs(m.Source) {
			return nil, fmt.Errorf("mount %s -> %s (%s): paths must be absolute", m.Source, m.Target, m.Origin)
		}
	}
	return out, nil
}

// runContainerInit is `realk8s container-init SPEC -- ARGV...`, already in
// its own mount namespace.
func runContainerInit(args []string) int {
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintln(os.Stderr, "container-init: usage: container-init SPEC -- ARGV...")
		return 2
	}
	body, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "container-init:", err)
		return 127
	}
	var spec initSpec
	if err := json.Unmarshal(body, &spec); err != nil {
		fmt.Fprintln(os.Stderr, "container-init: spec:", err)
		return 127
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "container-init: make / private:", err)
		return 127
	}
	m := &mounter{owned: map[string]bool{}}
	var rec initRecord
	for _, b := range spec.Mounts {
		reason, err := m.bind(b)
		if err != nil {
			fmt.Fprintf(os.Stderr, "container-init: mount %s -> %s (%s): %v\n", b.Source, b.Target, b.Origin, err)
			return 127
		}
		if reason != "" {
			rec.Skipped = append(rec.Skipped, struct {
				bindMount
				Reason string `json:"reason"`
			}{b, reason})
		} else {
			rec.Applied = append(rec.Applied, b)
		}
	}
	if spec.Record != "" {
		if out, err := json.Marshal(rec); err == nil {
			_ = writeAtomic(spec.Record, out)
		}
	}
	if spec.Dir != "" {
		_ = os.Chdir(spec.Dir)
	}
	argv := args[2:]
	path := argv[0]
	if !strings.Contains(path, "/") {
		for _, kv := range spec.Env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				_ = os.Setenv("PATH", v)
			}
		}
		if p, err := exec.LookPath(path); err == nil {
			path = p
		}
	}
	err = syscall.Exec(path, argv, spec.Env)
	fmt.Fprintf(os.Stderr, "container-init: exec %q: %v\n", argv[0], err)
	return 127
}

type mounter struct {
	owned map[string]bool // directories this namespace made writable (mirrors and what was created in them)
}

// bind applies one mount; a non-empty reason means it was skipped.
func (m *mounter) bind(b bindMount) (string, error) {
	src, err := os.Stat(b.Source)
	if err != nil {
		return fmt.Sprintf("source: %v", err), nil
	}
	target := filepath.Clean(b.Target)
	if err := m.ensure(target, src.IsDir()); err != nil {
		return "", err
	}
	if err := syscall.Mount(b.Source, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return "", fmt.Errorf("bind: %v", err)
	}
	if b.ReadOnly {
		flags := uintptr(syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_RDONLY)
		if err := syscall.Mount("", target, "", flags, ""); err != nil {
			return "", fmt.Errorf("remount read-only: %v", err)
		}
	}
	return "", nil
}

// ensure makes target exist (a directory or a file) without writing on the host.
func (m *mounter) ensure(target string, dir bool) error {
	if _, err := os.Stat(target); err == nil {
		return nil
	}
	parent := filepath.Dir(target)
	if parent == target {
		return fmt.Errorf("%s does not exist", target)
	}
	if err := m.ensure(parent, true); err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(parent)
	if err != nil {
		return err
	}
	if !m.owned[real] {
		if err := m.mirror(real); err != nil {
			return fmt.Errorf("mirror %s: %v", real, err)
		}
	}
	path := filepath.Join(real, filepath.Base(target))
	if dir {
		if err := os.Mkdir(path, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
		m.owned[path] = true
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// mirror replaces dir, in this namespace, by a tmpfs with a bind mount of each of its entries.
func (m *mounter) mirror(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	fd, err := syscall.Open(dir, oPath|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	mode := fmt.Sprintf("mode=%o", st.Mode().Perm())
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, mode); err != nil {
		return err
	}
	m.owned[dir] = true
	old := fmt.Sprintf("/proc/self/fd/%d", fd)
	for _, e := range entries {
		src, dst := filepath.Join(old, e.Name()), filepath.Join(dir, e.Name())
		switch {
		case e.Type()&os.ModeSymlink != 0:
			link, err := os.Readlink(src)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, dst); err != nil {
				return err
			}
			continue
		case e.IsDir():
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
		default:
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			f.Close()
		}
		if err := syscall.Mount(src, dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %v", e.Name(), err)
		}
	}
	return nil
}
