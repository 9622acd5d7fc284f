package main

// A small CRI v1 runtime and image service. Its "containers" are local
// processes started with exactly the command, environment and working
// directory that kubelet passes in CreateContainer, in a mount namespace of
// their own where kubelet's mounts and devices and the CDI devices' mounts
// and device nodes are bind-mounted (mounts.go; CDI resolution: cdi.go;
// --apply-mounts=false starts them in the runtime's own namespace instead). Every CreateContainer request is written as JSON to
// --record-dir (<seq>-<container id>.json) and every started process's pid to
// <container id>.pid, so tests can read what kubelet passed and what ran.
// Images are names only: every image is present and pulling is a no-op; the
// process is the container's command + args.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	rt "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type sandbox struct {
	id      string
	config  *rt.PodSandboxConfig
	created int64
	ready   bool
}

type container struct {
	id, sandboxID, logPath string
	config                 *rt.ContainerConfig
	state                  rt.ContainerState
	created, started       int64
	finished               int64
	exitCode               int32
	reason                 string
	proc                   *exec.Cmd
	done                   chan struct{}
	cdi                    *cdiResolved
}

type criServer struct {
	rt.UnimplementedRuntimeServiceServer
	rt.UnimplementedImageServiceServer
	mu         sync.Mutex
	seq        int
	recordDir  string
	stateDir   string
	cdiDir     string
	applyMnts  bool
	sandboxes  map[string]*sandbox
	containers map[string]*container
	images     map[string]bool
}

func runCRI(args []string) int {
	fs := flag.NewFlagSet("cri", flag.ContinueOnError)
	socket := fs.String("socket", "", "unix socket path")
	recordDir := fs.String("record-dir", "", "directory for CreateContainer records")
	stateDir := fs.String("state-dir", "", "working directory for processes without one")
	cdiDir := fs.String("cdi-dir", "", "directory of CDI spec files (*.json) for ContainerConfig.CDIDevices")
	applyMounts := fs.Bool("apply-mounts", true, "bind-mount kubelet's and CDI's mounts in a mount namespace per container")
	if err := fs.Parse(args); err != nil || *socket == "" || *recordDir == "" || *stateDir == "" {
		fmt.Fprintln(os.Stderr, "cri: --socket, --record-dir and --state-dir are required")
		return 2
	}
	for _, d := range []string{*recordDir, *stateDir, filepath.Dir(*socket)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "cri:", err)
			return 1
		}
	}
	_ = os.Remove(*socket)
	lis, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cri:", err)
		return 1
	}
	s := &criServer{recordDir: *recordDir, stateDir: *stateDir, cdiDir: *cdiDir, applyMnts: *applyMounts,
		sandboxes: map[string]*sandbox{}, containers: map[string]*container{}, images: map[string]bool{}}
	g := grpc.NewServer()
	rt.RegisterRuntimeServiceServer(g, s)
	rt.RegisterImageServiceServer(g, s)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		g.Stop()
	}()
	fmt.Fprintln(os.Stderr, "cri: serving on", *socket)
	err = g.Serve(lis)
	s.killAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cri:", err)
		return 1
	}
	return 0
}

func (s *criServer) newID(kind string) string {
	s.seq++
	h := sha256.Sum256([]byte(fmt.Sprintf("%s-%d-%d-%d", kind, os.Getpid(), time.Now().UnixNano(), s.seq)))
	return hex.EncodeToString(h[:])
}

func (s *criServer) killAll() {
	s.mu.Lock()
	var waits []chan struct{}
	for _, c := range s.containers {
		if c.state == rt.ContainerState_CONTAINER_RUNNING {
			_ = syscall.Kill(-c.proc.Process.Pid, syscall.SIGKILL)
			waits = append(waits, c.done)
		}
	}
	s.mu.Unlock()
	for _, w := range waits {
		<-w
	}
}

func (s *criServer) Version(context.Context, *rt.VersionRequest) (*rt.VersionResponse, error) {
	return &rt.VersionResponse{Version: "0.1.0", RuntimeName: "realk8s-cri", RuntimeVersion: "0.1.0", RuntimeApiVersion: "v1"}, nil
}

func (s *criServer) Status(context.Context, *rt.StatusRequest) (*rt.StatusResponse, error) {
	return &rt.StatusResponse{Status: &rt.RuntimeStatus{Conditions: []*rt.RuntimeCondition{
		{Type: rt.RuntimeReady, Status: true}, {Type: rt.NetworkReady, Status: true}}}}, nil
}

func (s *criServer) RuntimeConfig(context.Context, *rt.RuntimeConfigRequest) (*rt.RuntimeConfigResponse, error) {
	return &rt.RuntimeConfigResponse{Linux: &rt.LinuxRuntimeConfiguration{CgroupDriver: rt.CgroupDriver_CGROUPFS}}, nil
}

func (s *criServer) UpdateRuntimeConfig(context.Context, *rt.UpdateRuntimeConfigRequest) (*rt.UpdateRuntimeConfigResponse, error) {
	return &rt.UpdateRuntimeConfigResponse{}, nil
}

func (s *criServer) RunPodSandbox(_ context.Context, r *rt.RunPodSandboxRequest) (*rt.RunPodSandboxResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := &sandbox{id: s.newID("sandbox"), config: r.GetConfig(), created: time.Now().UnixNano(), ready: true}
	s.sandboxes[sb.id] = sb
	if d := r.GetConfig().GetLogDirectory(); d != "" {
		_ = os.MkdirAll(d, 0o755)
	}
	return &rt.RunPodSandboxResponse{PodSandboxId: sb.id}, nil
}

func (s *criServer) StopPodSandbox(ctx context.Context, r *rt.StopPodSandboxRequest) (*rt.StopPodSandboxResponse, error) {
	s.mu.Lock()
	var ids []string
	for id, c := range s.containers {
		if c.sandboxID == r.GetPodSandboxId() {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		if _, err := s.StopContainer(ctx, &rt.StopContainerRequest{ContainerId: id, Timeout: 2}); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	if sb, ok := s.sandboxes[r.GetPodSandboxId()]; ok {
		sb.ready = false
	}
	s.mu.Unlock()
	return &rt.StopPodSandboxResponse{}, nil
}

func (s *criServer) RemovePodSandbox(ctx context.Context, r *rt.RemovePodSandboxRequest) (*rt.RemovePodSandboxResponse, error) {
	if _, err := s.StopPodSandbox(ctx, &rt.StopPodSandboxRequest{PodSandboxId: r.GetPodSandboxId()}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, c := range s.containers {
		if c.sandboxID == r.GetPodSandboxId() {
			delete(s.containers, id)
		}
	}
	delete(s.sandboxes, r.GetPodSandboxId())
	return &rt.RemovePodSandboxResponse{}, nil
}

func (sb *sandbox) state() rt.PodSandboxState {
	if sb.ready {
		return rt.PodSandboxState_SANDBOX_READY
	}
	return rt.PodSandboxState_SANDBOX_NOTREADY
}

func (s *criServer) PodSandboxStatus(_ context.Context, r *rt.PodSandboxStatusRequest) (*rt.PodSandboxStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb, ok := s.sandboxes[r.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "sandbox %q not found", r.GetPodSandboxId())
	}
	return &rt.PodSandboxStatusResponse{Status: &rt.PodSandboxStatus{
		Id: sb.id, Metadata: sb.config.GetMetadata(), State: sb.state(), CreatedAt: sb.created,
		Network: &rt.PodSandboxNetworkStatus{Ip: "127.0.0.1"},
		Linux:   &rt.LinuxPodSandboxStatus{Namespaces: &rt.Namespace{Options: sb.config.GetLinux().GetSecurityContext().GetNamespaceOptions()}},
		Labels:  sb.config.GetLabels(), Annotations: sb.config.GetAnnotations(),
	}}, nil
}

func (s *criServer) ListPodSandbox(_ context.Context, r *rt.ListPodSandboxRequest) (*rt.ListPodSandboxResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := r.GetFilter()
	out := []*rt.PodSandbox{}
	for _, sb := range s.sandboxes {
		if f.GetId() != "" && f.GetId() != sb.id ||
			f.GetState() != nil && f.GetState().GetState() != sb.state() ||
			!labelsMatch(sb.config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		out = append(out, &rt.PodSandbox{Id: sb.id, Metadata: sb.config.GetMetadata(), State: sb.state(),
			CreatedAt: sb.created, Labels: sb.config.GetLabels(), Annotations: sb.config.GetAnnotations()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt < out[j].CreatedAt })
	return &rt.ListPodSandboxResponse{Items: out}, nil
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func (s *criServer) CreateContainer(_ context.Context, r *rt.CreateContainerRequest) (*rt.CreateContainerResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb, ok := s.sandboxes[r.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "sandbox %q not found", r.GetPodSandboxId())
	}
	c := &container{id: s.newID("container"), sandboxID: sb.id, config: r.GetConfig(),
		state: rt.ContainerState_CONTAINER_CREATED, created: time.Now().UnixNano(), done: make(chan struct{})}
	if r.GetConfig().GetLogPath() != "" && sb.config.GetLogDirectory() != "" {
		c.logPath = filepath.Join(sb.config.GetLogDirectory(), r.GetConfig().GetLogPath())
	}
	body, err := protojson.Marshal(r)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "record: %v", err)
	}
	var cdiNames []string
	for _, d := range r.GetConfig().GetCDIDevices() {
		cdiNames = append(cdiNames, d.GetName())
	}
	if c.cdi, err = resolveCDI(s.cdiDir, cdiNames); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	name := fmt.Sprintf("%06d-%s.json", s.seq, c.id)
	if err := writeAtomic(filepath.Join(s.recordDir, name), body); err != nil {
		return nil, status.Errorf(codes.Internal, "record: %v", err)
	}
	if c.cdi != nil {
		edits, _ := json.Marshal(c.cdi)
		if err := writeAtomic(filepath.Join(s.recordDir, strings.TrimSuffix(name, ".json")+".cdi.json"), edits); err != nil {
			return nil, status.Errorf(codes.Internal, "record: %v", err)
		}
	}
	s.containers[c.id] = c
	return &rt.CreateContainerResponse{ContainerId: c.id}, nil
}

func writeAtomic(path string, body []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, body, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// criLog writes a process's output in the CRI log format kubelet reads.
func criLog(w io.Writer, stream string, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fmt.Fprintf(w, "%s %s F %s\n", time.Now().UTC().Format(time.RFC3339Nano), stream, sc.Text())
	}
}

func (s *criServer) StartContainer(_ context.Context, r *rt.StartContainerRequest) (*rt.StartContainerResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[r.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", r.GetContainerId())
	}
	if c.state != rt.ContainerState_CONTAINER_CREATED {
		return nil, status.Errorf(codes.FailedPrecondition, "container %q is not in state created", c.id)
	}
	argv := append(append([]string{}, c.config.GetCommand()...), c.config.GetArgs()...)
	if len(argv) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "container %q has no command: set command/args in the pod", c.id)
	}
	env := []string{}
	for _, kv := range c.config.GetEnvs() {
		env = append(env, kv.GetKey()+"="+string(kv.GetValue()))
	}
	if c.cdi != nil {
		env = append(env, c.cdi.Env...) // later entries win, as in exec
	}
	dir := s.stateDir
	if wd := c.config.GetWorkingDir(); wd != "" {
		if st, err := os.Stat(wd); err == nil && st.IsDir() {
			dir = wd
		}
	}
	if p, err := exec.LookPath(argv[0]); err == nil {
		argv[0] = p
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.applyMnts {
		mounts, err := containerMounts(c.config, c.cdi)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "container %q: %v", c.id, err)
		}
		self, err := os.Executable()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "container-init: %v", err)
		}
		spec := initSpec{Mounts: mounts, Env: env, Dir: dir, Record: filepath.Join(s.recordDir, c.id+".mounts.json")}
		body, _ := json.Marshal(spec)
		specPath := filepath.Join(s.stateDir, c.id+".init.json")
		if err := writeAtomic(specPath, body); err != nil {
			return nil, status.Errorf(codes.Internal, "container-init spec: %v", err)
		}
		cmd = exec.Command(self, append([]string{"container-init", specPath, "--"}, argv...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Unshareflags: syscall.CLONE_NEWNS}
	}
	cmd.Env = env
	cmd.Dir = dir
	var logFile *os.File
	if c.logPath != "" {
		f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err == nil {
			logFile = f
		}
	}
	var pipes []io.ReadCloser
	if logFile != nil {
		so, err1 := cmd.StdoutPipe()
		se, err2 := cmd.StderrPipe()
		if err1 != nil || err2 != nil {
			return nil, status.Errorf(codes.Internal, "pipes: %v %v", err1, err2)
		}
		pipes = []io.ReadCloser{so, se}
	}
	if err := cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		c.state, c.finished, c.exitCode, c.reason = rt.ContainerState_CONTAINER_EXITED, time.Now().UnixNano(), 128, "StartError"
		close(c.done)
		return nil, status.Errorf(codes.Unknown, "start %q: %v", argv[0], err)
	}
	c.proc, c.state, c.started = cmd, rt.ContainerState_CONTAINER_RUNNING, time.Now().UnixNano()
	_ = writeAtomic(filepath.Join(s.recordDir, c.id+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)))
	var lw sync.WaitGroup
	var lmu sync.Mutex
	for i, p := range pipes {
		lw.Add(1)
		go func(stream string, p io.Reader) {
			defer lw.Done()
			criLog(&lockedWriter{mu: &lmu, w: logFile}, stream, p)
		}([]string{"stdout", "stderr"}[i], p)
	}
	go func() {
		lw.Wait()
		err := cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		code := int32(0)
		if err != nil {
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = int32(ee.ExitCode())
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					code = 128 + int32(ws.Signal())
				}
			}
		}
		s.mu.Lock()
		c.state, c.finished, c.exitCode = rt.ContainerState_CONTAINER_EXITED, time.Now().UnixNano(), code
		if code == 0 {
			c.reason = "Completed"
		} else {
			c.reason = "Error"
		}
		s.mu.Unlock()
		close(c.done)
	}()
	return &rt.StartContainerResponse{}, nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (s *criServer) StopContainer(_ context.Context, r *rt.StopContainerRequest) (*rt.StopContainerResponse, error) {
	s.mu.Lock()
	c, ok := s.containers[r.GetContainerId()]
	if !ok {
		s.mu.Unlock()
		return &rt.StopContainerResponse{}, nil
	}
	if c.state == rt.ContainerState_CONTAINER_CREATED {
		c.state, c.finished, c.reason = rt.ContainerState_CONTAINER_EXITED, time.Now().UnixNano(), "NeverStarted"
		close(c.done)
	}
	running := c.state == rt.ContainerState_CONTAINER_RUNNING
	s.mu.Unlock()
	if !running {
		return &rt.StopContainerResponse{}, nil
	}
	pgid := -c.proc.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	timeout := time.Duration(r.GetTimeout()) * time.Second
	if timeout <= 0 {
		timeout = time.Second
	}
	select {
	case <-c.done:
	case <-time.After(timeout):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-c.done
	}
	return &rt.StopContainerResponse{}, nil
}

func (s *criServer) RemoveContainer(ctx context.Context, r *rt.RemoveContainerRequest) (*rt.RemoveContainerResponse, error) {
	if _, err := s.StopContainer(ctx, &rt.StopContainerRequest{ContainerId: r.GetContainerId(), Timeout: 1}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.containers, r.GetContainerId())
	s.mu.Unlock()
	return &rt.RemoveContainerResponse{}, nil
}

func (s *criServer) ListContainers(_ context.Context, r *rt.ListContainersRequest) (*rt.ListContainersResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := r.GetFilter()
	out := []*rt.Container{}
	for _, c := range s.containers {
		if f.GetId() != "" && f.GetId() != c.id ||
			f.GetPodSandboxId() != "" && f.GetPodSandboxId() != c.sandboxID ||
			f.GetState() != nil && f.GetState().GetState() != c.state ||
			!labelsMatch(c.config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		out = append(out, &rt.Container{Id: c.id, PodSandboxId: c.sandboxID, Metadata: c.config.GetMetadata(),
			Image: c.config.GetImage(), ImageRef: imageID(c.config.GetImage().GetImage()), State: c.state,
			CreatedAt: c.created, Labels: c.config.GetLabels(), Annotations: c.config.GetAnnotations()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt < out[j].CreatedAt })
	return &rt.ListContainersResponse{Containers: out}, nil
}

func (s *criServer) ContainerStatus(_ context.Context, r *rt.ContainerStatusRequest) (*rt.ContainerStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[r.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", r.GetContainerId())
	}
	return &rt.ContainerStatusResponse{Status: &rt.ContainerStatus{
		Id: c.id, Metadata: c.config.GetMetadata(), State: c.state, CreatedAt: c.created, StartedAt: c.started,
		FinishedAt: c.finished, ExitCode: c.exitCode, Image: c.config.GetImage(),
		ImageRef: imageID(c.config.GetImage().GetImage()), Reason: c.reason, Labels: c.config.GetLabels(),
		Annotations: c.config.GetAnnotations(), Mounts: c.config.GetMounts(), LogPath: c.logPath,
	}}, nil
}

// ExecSync runs the command (an exec probe's) as a local process with the
// container's environment and working directory, as kubelet's prober asks.
func (s *criServer) ExecSync(ctx context.Context, r *rt.ExecSyncRequest) (*rt.ExecSyncResponse, error) {
	s.mu.Lock()
	c, ok := s.containers[r.GetContainerId()]
	s.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", r.GetContainerId())
	}
	if len(r.GetCmd()) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "exec in %q: empty command", c.id)
	}
	if t := r.GetTimeout(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Second)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, r.GetCmd()[0], r.GetCmd()[1:]...)
	for _, kv := range c.config.GetEnvs() {
		cmd.Env = append(cmd.Env, kv.GetKey()+"="+string(kv.GetValue()))
	}
	if wd := c.config.GetWorkingDir(); wd != "" {
		cmd.Dir = wd
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := int32(0)
	if err := cmd.Run(); err != nil {
		code = 126
		if ee, ok := err.(*exec.ExitError); ok {
			code = int32(ee.ExitCode())
		}
	}
	return &rt.ExecSyncResponse{Stdout: []byte(stdout.String()), Stderr: []byte(stderr.String()), ExitCode: code}, nil
}

func (s *criServer) ListContainerStats(context.Context, *rt.ListContainerStatsRequest) (*rt.ListContainerStatsResponse, error) {
	return &rt.ListContainerStatsResponse{}, nil
}

func (s *criServer) ListPodSandboxStats(context.Context, *rt.ListPodSandboxStatsRequest) (*rt.ListPodSandboxStatsResponse, error) {
	return &rt.ListPodSandboxStatsResponse{}, nil
}

func (s *criServer) ReopenContainerLog(context.Context, *rt.ReopenContainerLogRequest) (*rt.ReopenContainerLogResponse, error) {
	return &rt.ReopenContainerLogResponse{}, nil
}

func imageID(name string) string {
	h := sha256.Sum256([]byte(name))
	return "sha256:" + hex.EncodeToString(h[:])
}

func (s *criServer) image(name string) *rt.Image {
	return &rt.Image{Id: imageID(name), RepoTags: []string{name}, Size: 1, Spec: &rt.ImageSpec{Image: name}}
}

func (s *criServer) ListImages(context.Context, *rt.ListImagesRequest) (*rt.ListImagesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []*rt.Image{}
	for name := range s.images {
		out = append(out, s.image(name))
	}
	return &rt.ListImagesResponse{Images: out}, nil
}

func (s *criServer) ImageStatus(_ context.Context, r *rt.ImageStatusRequest) (*rt.ImageStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.GetImage().GetImage()
	s.images[name] = true
	return &rt.ImageStatusResponse{Image: s.image(name)}, nil
}

func (s *criServer) PullImage(_ context.Context, r *rt.PullImageRequest) (*rt.PullImageResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.images[r.GetImage().GetImage()] = true
	return &rt.PullImageResponse{ImageRef: imageID(r.GetImage().GetImage())}, nil
}

func (s *criServer) RemoveImage(_ context.Context, r *rt.RemoveImageRequest) (*rt.RemoveImageResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.images, r.GetImage().GetImage())
	return &rt.RemoveImageResponse{}, nil
}

func (s *criServer) ImageFsInfo(context.Context, *rt.ImageFsInfoRequest) (*rt.ImageFsInfoResponse, error) {
	fs := &rt.FilesystemUsage{Timestamp: time.Now().UnixNano(), FsId: &rt.FilesystemIdentifier{Mountpoint: s.stateDir},
		UsedBytes: &rt.UInt64Value{Value: 0}, InodesUsed: &rt.UInt64Value{Value: 0}}
	return &rt.ImageFsInfoResponse{ImageFilesystems: []*rt.FilesystemUsage{fs}, ContainerFilesystems: []*rt.FilesystemUsage{fs}}, nil
}
