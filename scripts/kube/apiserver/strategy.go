package main

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// strategy is one generic create/update/delete strategy for every kind: metadata validation,
// generation bumps on spec changes, and the spec/status split of a status subresource. The
// per-kind strategies of k8s.io/kubernetes (full object validation, most defaulting) are not
// packaged; resource.onCreate carries the few defaults weft depends on.
type strategy struct {
	runtime.ObjectTyper
	r          *resource
	statusOnly bool
}

func (s *strategy) GenerateName(base string) string {
	return names.SimpleNameGenerator.GenerateName(base)
}
func (s *strategy) NamespaceScoped() bool           { return s.r.namespaced }
func (s *strategy) AllowCreateOnUpdate() bool       { return false }
func (s *strategy) AllowUnconditionalUpdate() bool  { return true }
func (s *strategy) Canonicalize(obj runtime.Object) {}

func (s *strategy) WarningsOnCreate(ctx context.Context, obj runtime.Object) []string { return nil }
func (s *strategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return nil
}

func (s *strategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	if s.r.status && !s.r.keepStatusOnCreate {
		setField(obj, "Status", reflect.Value{})
	}
	if s.r.generation() {
		mustMeta(obj).SetGeneration(1)
	}
	if s.r.onCreate != nil {
		s.r.onCreate(obj)
	}
}

func (s *strategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	newMeta, oldMeta := mustMeta(obj), mustMeta(old)
	if s.statusOnly {
		// Everything but metadata and status comes from the stored object.
		copyFieldsExcept(obj, old, "TypeMeta", "ObjectMeta", "Status")
		newMeta.SetGeneration(oldMeta.GetGeneration())
		return
	}
	if s.r.status {
		setField(obj, "Status", fieldOf(old, "Status"))
		newMeta.SetGeneration(oldMeta.GetGeneration())
		if s.r.generation() && !equalExcept(obj, old, "TypeMeta", "ObjectMeta", "Status") {
			newMeta.SetGeneration(oldMeta.GetGeneration() + 1)
		}
	}
	if s.r.onUpdate != nil {
		s.r.onUpdate(obj, old)
	}
}

// CheckGracefulDelete: a pod bound to a node is deleted gracefully, as kube-apiserver does: it
// gets a deletionTimestamp (a MODIFIED event) and stays until kubelet, which tests play, deletes
// it with gracePeriodSeconds=0. Unbound and finished pods, and every other kind, go at once.
func (s *strategy) CheckGracefulDelete(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool {
	p, ok := obj.(*corev1.Pod)
	if !ok || options == nil {
		return false
	}
	period := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if options.GracePeriodSeconds != nil {
		period = *options.GracePeriodSeconds
	} else if p.Spec.TerminationGracePeriodSeconds != nil {
		period = *p.Spec.TerminationGracePeriodSeconds
	}
	if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
		period = 0
	}
	options.GracePeriodSeconds = &period
	return true
}

// generation: the kinds whose kube-apiserver strategy counts spec changes in
// metadata.generation (workloads, pods since 1.33), not namespaces, nodes or services.
func (r *resource) generation() bool {
	return r.status && (r.gv.Group != "" || r.kind == "Pod")
}

func (s *strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	objectMeta := objectMetaOf(obj)
	if objectMeta == nil {
		return field.ErrorList{field.InternalError(field.NewPath("metadata"), fmt.Errorf("no ObjectMeta in %T", obj))}
	}
	return apimachineryvalidation.ValidateObjectMeta(objectMeta, s.r.namespaced, s.r.validName, field.NewPath("metadata"))
}

func (s *strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	newMeta, oldMeta := objectMetaOf(obj), objectMetaOf(old)
	errs := apimachineryvalidation.ValidateObjectMetaUpdate(newMeta, oldMeta, field.NewPath("metadata"))
	if svc, ok := obj.(*corev1.Service); ok {
		oldSvc := old.(*corev1.Service)
		if oldSvc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != oldSvc.Spec.ClusterIP {
			errs = append(errs, field.Invalid(field.NewPath("spec", "clusterIP"), svc.Spec.ClusterIP, "field is immutable"))
		}
	}
	return errs
}

// GetResetFields: the fields a request to this endpoint may not set, for server-side apply.
func (s *strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.r.status {
		return nil
	}
	version := fieldpath.APIVersion(s.r.gv.String())
	if s.statusOnly {
		return map[fieldpath.APIVersion]*fieldpath.Set{version: fieldpath.NewSet(fieldpath.MakePathOrDie("spec"))}
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{version: fieldpath.NewSet(fieldpath.MakePathOrDie("status"))}
}

func (s *strategy) attrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, nil, err
	}
	set := fields.Set{"metadata.name": m.GetName()}
	if s.r.namespaced {
		set["metadata.namespace"] = m.GetNamespace()
	}
	if s.r.fields != nil {
		for k, v := range s.r.fields(obj) {
			set[k] = v
		}
	}
	return labels.Set(m.GetLabels()), set, nil
}

// addFieldSelectors lets the handlers accept the field selectors each kind's attrs provide.
func addFieldSelectors(scheme *runtime.Scheme) error {
	for _, r := range resources() {
		if r.fields == nil {
			continue
		}
		allowed := map[string]bool{"metadata.name": true, "metadata.namespace": true}
		for k := range r.fields(r.newObj()) {
			allowed[k] = true
		}
		kind := r.gv.WithKind(r.kind)
		err := scheme.AddFieldLabelConversionFunc(kind, func(label, value string) (string, string, error) {
			if allowed[label] {
				return label, value, nil
			}
			return "", "", fmt.Errorf("field label not supported: %s", label)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func podFields(o runtime.Object) fields.Set {
	p := o.(*corev1.Pod)
	return fields.Set{
		"spec.nodeName":            p.Spec.NodeName,
		"spec.restartPolicy":       string(p.Spec.RestartPolicy),
		"spec.schedulerName":       p.Spec.SchedulerName,
		"spec.serviceAccountName":  p.Spec.ServiceAccountName,
		"spec.hostNetwork":         strconv.FormatBool(p.Spec.HostNetwork),
		"status.phase":             string(p.Status.Phase),
		"status.podIP":             p.Status.PodIP,
		"status.nominatedNodeName": p.Status.NominatedNodeName,
	}
}

func eventFields(o runtime.Object) fields.Set {
	e := o.(*corev1.Event)
	return fields.Set{
		"involvedObject.kind":            e.InvolvedObject.Kind,
		"involvedObject.namespace":       e.InvolvedObject.Namespace,
		"involvedObject.name":            e.InvolvedObject.Name,
		"involvedObject.uid":             string(e.InvolvedObject.UID),
		"involvedObject.apiVersion":      e.InvolvedObject.APIVersion,
		"involvedObject.resourceVersion": e.InvolvedObject.ResourceVersion,
		"involvedObject.fieldPath":       e.InvolvedObject.FieldPath,
		"reason":                         e.Reason,
		"reportingComponent":             e.ReportingController,
		"source":                         e.Source.Component,
		"type":                           e.Type,
	}
}

func namespaceOnCreate(o runtime.Object) {
	ns := o.(*corev1.Namespace)
	ns.Status.Phase = corev1.NamespaceActive
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels["kubernetes.io/metadata.name"] = ns.Name
}

func secretOnCreate(o runtime.Object) {
	if s := o.(*corev1.Secret); s.Type == "" {
		s.Type = corev1.SecretTypeOpaque
	}
}

// podOnCreate: the defaults of kube-apiserver's pod strategy and ServiceAccount admission that
// weft reads (phase Pending, QoS class, service account, protocols, restart policy).
func podOnCreate(o runtime.Object) {
	p := o.(*corev1.Pod)
	p.Status = corev1.PodStatus{Phase: corev1.PodPending, QOSClass: podQOS(p)}
	if p.Spec.ServiceAccountName == "" {
		p.Spec.ServiceAccountName = "default"
	}
	if p.Spec.RestartPolicy == "" {
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
	}
	if p.Spec.DNSPolicy == "" {
		p.Spec.DNSPolicy = corev1.DNSClusterFirst
	}
	if p.Spec.SchedulerName == "" {
		p.Spec.SchedulerName = corev1.DefaultSchedulerName
	}
	for i := range p.Spec.Containers {
		for j := range p.Spec.Containers[i].Ports {
			if p.Spec.Containers[i].Ports[j].Protocol == "" {
				p.Spec.Containers[i].Ports[j].Protocol = corev1.ProtocolTCP
			}
		}
	}
}

// podQOS is Kubernetes' QoS rule: BestEffort without requests or limits, Guaranteed when every
// container limits cpu and memory with requests equal to limits, Burstable otherwise.
func podQOS(p *corev1.Pod) corev1.PodQOSClass {
	containers := append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...)
	any, guaranteed := false, true
	for _, c := range containers {
		if len(c.Resources.Requests) > 0 || len(c.Resources.Limits) > 0 {
			any = true
		}
		for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			limit, hasLimit := c.Resources.Limits[name]
			request, hasRequest := c.Resources.Requests[name]
			if !hasLimit || (hasRequest && request.Cmp(limit) != 0) {
				guaranteed = false
			}
		}
	}
	switch {
	case !any:
		return corev1.PodQOSBestEffort
	case guaranteed:
		return corev1.PodQOSGuaranteed
	default:
		return corev1.PodQOSBurstable
	}
}

// serviceOnCreate: type, protocol, targetPort and IP-family defaults, and a cluster IP from
// 10.96.0.0/16 (kube-apiserver's default range is 10.0.0.0/24; 10.96/12 is kubeadm's).
func serviceOnCreate(o runtime.Object) {
	svc := o.(*corev1.Service)
	if svc.Spec.Type == "" {
		svc.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if svc.Spec.SessionAffinity == "" {
		svc.Spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == (intstr.IntOrString{}) {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	if svc.Spec.ClusterIP == "" {
		svc.Spec.ClusterIP = clusterIPs.next()
	}
	svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		single := corev1.IPFamilyPolicySingleStack
		svc.Spec.IPFamilyPolicy = &single
	}
	if svc.Spec.InternalTrafficPolicy == nil {
		cluster := corev1.ServiceInternalTrafficPolicyCluster
		svc.Spec.InternalTrafficPolicy = &cluster
	}
}

func serviceOnUpdate(obj, old runtime.Object) {
	svc, oldSvc := obj.(*corev1.Service), old.(*corev1.Service)
	// kubectl apply does not send the allocated IP back; keep it, as kube-apiserver does.
	if svc.Spec.ClusterIP == "" {
		svc.Spec.ClusterIP = oldSvc.Spec.ClusterIP
		svc.Spec.ClusterIPs = oldSvc.Spec.ClusterIPs
	}
	if svc.Spec.IPFamilies == nil {
		svc.Spec.IPFamilies = oldSvc.Spec.IPFamilies
		svc.Spec.IPFamilyPolicy = oldSvc.Spec.IPFamilyPolicy
	}
}

// clusterIPs hands out addresses in order; a restart resumes after the highest in etcd (see
// seedClusterIPs). Addresses of deleted services are not reused.
var clusterIPs = &ipAllocator{last: netip.MustParseAddr("10.96.0.9")}

type ipAllocator struct {
	mu   sync.Mutex
	last netip.Addr
}

func (a *ipAllocator) next() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last = a.last.Next()
	return a.last.String()
}

func (a *ipAllocator) seen(ip string) {
	addr, err := netip.ParseAddr(ip)
	if err != nil || !netip.MustParsePrefix("10.96.0.0/16").Contains(addr) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last.Less(addr) {
		a.last = addr
	}
}

func mustMeta(obj runtime.Object) metav1.Object {
	m, err := meta.Accessor(obj)
	if err != nil {
		panic(err)
	}
	return m
}

func objectMetaOf(obj runtime.Object) *metav1.ObjectMeta {
	f := fieldOf(obj, "ObjectMeta")
	if !f.IsValid() {
		return nil
	}
	return f.Addr().Interface().(*metav1.ObjectMeta)
}

func fieldOf(obj runtime.Object, name string) reflect.Value {
	return reflect.ValueOf(obj).Elem().FieldByName(name)
}

// setField sets a struct field; an invalid value zeroes it.
func setField(obj runtime.Object, name string, value reflect.Value) {
	f := fieldOf(obj, name)
	if !f.IsValid() {
		return
	}
	if !value.IsValid() {
		f.Set(reflect.Zero(f.Type()))
		return
	}
	f.Set(value)
}

func copyFieldsExcept(dst, src runtime.Object, except ...string) {
	d, s := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
	for i := 0; i < d.NumField(); i++ {
		if !contains(except, d.Type().Field(i).Name) {
			d.Field(i).Set(s.Field(i))
		}
	}
}

func equalExcept(a, b runtime.Object, except ...string) bool {
	x, y := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for i := 0; i < x.NumField(); i++ {
		if !contains(except, x.Type().Field(i).Name) && !reflect.DeepEqual(x.Field(i).Interface(), y.Field(i).Interface()) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
