package main

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/storage"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// resource describes one served kind; its behaviour beyond generic storage is in strategy.go.
type resource struct {
	gv         schema.GroupVersion
	plural     string
	singular   string
	kind       string
	namespaced bool
	status     bool // has a /status subresource; the main resource ignores status changes
	shortNames []string
	categories []string
	newObj     func() runtime.Object
	newList    func() runtime.Object
	validName  apimachineryvalidation.ValidateNameFunc
	// fields are the field selectors beyond metadata.name and metadata.namespace.
	fields func(runtime.Object) fields.Set
	// onCreate plays what kube-apiserver's own strategy does on create (defaults, status reset).
	onCreate func(runtime.Object)
	onUpdate func(obj, old runtime.Object)
	// keepStatusOnCreate: a Node is registered by its kubelet with its status.
	keepStatusOnCreate bool
	// returnDeleted: DELETE answers with the object rather than a Status, as kube-apiserver
	// does for these kinds (clients' generated code expects it).
	returnDeleted bool
}

var (
	dnsSubdomain = apimachineryvalidation.NameIsDNSSubdomain
	dnsLabel     = apimachineryvalidation.NameIsDNSLabel
	dns1035      = apimachineryvalidation.NameIsDNS1035Label
	pathSegment  = func(name string, prefix bool) []string { return path.IsValidPathSegmentName(name) }
)

func resources() []*resource {
	core, apps := corev1.SchemeGroupVersion, appsv1.SchemeGroupVersion
	rbac := rbacv1.SchemeGroupVersion
	return []*resource{
		{gv: core, plural: "namespaces", singular: "namespace", kind: "Namespace", status: true, shortNames: []string{"ns"},
			newObj: func() runtime.Object { return &corev1.Namespace{} }, newList: func() runtime.Object { return &corev1.NamespaceList{} },
			validName: dnsLabel, onCreate: namespaceOnCreate,
			fields: func(o runtime.Object) fields.Set {
				return fields.Set{"status.phase": string(o.(*corev1.Namespace).Status.Phase)}
			}},
		{gv: core, plural: "pods", singular: "pod", kind: "Pod", namespaced: true, status: true, shortNames: []string{"po"}, categories: []string{"all"},
			newObj: func() runtime.Object { return &corev1.Pod{} }, newList: func() runtime.Object { return &corev1.PodList{} },
			validName: dnsSubdomain, onCreate: podOnCreate, fields: podFields, returnDeleted: true},
		{gv: core, plural: "services", singular: "service", kind: "Service", namespaced: true, status: true, shortNames: []string{"svc"}, categories: []string{"all"},
			newObj: func() runtime.Object { return &corev1.Service{} }, newList: func() runtime.Object { return &corev1.ServiceList{} },
			validName: dns1035, onCreate: serviceOnCreate, onUpdate: serviceOnUpdate, returnDeleted: true},
		{gv: core, plural: "endpoints", singular: "endpoints", kind: "Endpoints", namespaced: true, shortNames: []string{"ep"},
			newObj: func() runtime.Object { return &corev1.Endpoints{} }, newList: func() runtime.Object { return &corev1.EndpointsList{} },
			validName: dnsSubdomain},
		{gv: core, plural: "serviceaccounts", singular: "serviceaccount", kind: "ServiceAccount", namespaced: true, shortNames: []string{"sa"},
			newObj: func() runtime.Object { return &corev1.ServiceAccount{} }, newList: func() runtime.Object { return &corev1.ServiceAccountList{} },
			validName: dnsSubdomain, returnDeleted: true},
		{gv: core, plural: "nodes", singular: "node", kind: "Node", status: true, shortNames: []string{"no"},
			newObj: func() runtime.Object { return &corev1.Node{} }, newList: func() runtime.Object { return &corev1.NodeList{} },
			validName: dnsSubdomain, keepStatusOnCreate: true},
		{gv: core, plural: "configmaps", singular: "configmap", kind: "ConfigMap", namespaced: true, shortNames: []string{"cm"},
			newObj: func() runtime.Object { return &corev1.ConfigMap{} }, newList: func() runtime.Object { return &corev1.ConfigMapList{} },
			validName: dnsSubdomain},
		{gv: core, plural: "secrets", singular: "secret", kind: "Secret", namespaced: true,
			newObj: func() runtime.Object { return &corev1.Secret{} }, newList: func() runtime.Object { return &corev1.SecretList{} },
			validName: dnsSubdomain, onCreate: secretOnCreate,
			fields: func(o runtime.Object) fields.Set { return fields.Set{"type": string(o.(*corev1.Secret).Type)} }},
		{gv: core, plural: "events", singular: "event", kind: "Event", namespaced: true, shortNames: []string{"ev"},
			newObj: func() runtime.Object { return &corev1.Event{} }, newList: func() runtime.Object { return &corev1.EventList{} },
			validName: dnsSubdomain, fields: eventFields},

		{gv: apps, plural: "daemonsets", singular: "daemonset", kind: "DaemonSet", namespaced: true, status: true, shortNames: []string{"ds"}, categories: []string{"all"},
			newObj: func() runtime.Object { return &appsv1.DaemonSet{} }, newList: func() runtime.Object { return &appsv1.DaemonSetList{} },
			validName: dnsSubdomain},
		{gv: apps, plural: "deployments", singular: "deployment", kind: "Deployment", namespaced: true, status: true, shortNames: []string{"deploy"}, categories: []string{"all"},
			newObj: func() runtime.Object { return &appsv1.Deployment{} }, newList: func() runtime.Object { return &appsv1.DeploymentList{} },
			validName: dnsSubdomain},
		{gv: apps, plural: "replicasets", singular: "replicaset", kind: "ReplicaSet", namespaced: true, status: true, shortNames: []string{"rs"}, categories: []string{"all"},
			newObj: func() runtime.Object { return &appsv1.ReplicaSet{} }, newList: func() runtime.Object { return &appsv1.ReplicaSetList{} },
			validName: dnsSubdomain},

		{gv: discoveryv1.SchemeGroupVersion, plural: "endpointslices", singular: "endpointslice", kind: "EndpointSlice", namespaced: true,
			newObj: func() runtime.Object { return &discoveryv1.EndpointSlice{} }, newList: func() runtime.Object { return &discoveryv1.EndpointSliceList{} },
			validName: dnsSubdomain},

		{gv: rbac, plural: "roles", singular: "role", kind: "Role", namespaced: true,
			newObj: func() runtime.Object { return &rbacv1.Role{} }, newList: func() runtime.Object { return &rbacv1.RoleList{} }, validName: pathSegment},
		{gv: rbac, plural: "rolebindings", singular: "rolebinding", kind: "RoleBinding", namespaced: true,
			newObj: func() runtime.Object { return &rbacv1.RoleBinding{} }, newList: func() runtime.Object { return &rbacv1.RoleBindingList{} }, validName: pathSegment},
		{gv: rbac, plural: "clusterroles", singular: "clusterrole", kind: "ClusterRole",
			newObj: func() runtime.Object { return &rbacv1.ClusterRole{} }, newList: func() runtime.Object { return &rbacv1.ClusterRoleList{} }, validName: pathSegment},
		{gv: rbac, plural: "clusterrolebindings", singular: "clusterrolebinding", kind: "ClusterRoleBinding",
			newObj: func() runtime.Object { return &rbacv1.ClusterRoleBinding{} }, newList: func() runtime.Object { return &rbacv1.ClusterRoleBindingList{} }, validName: pathSegment},

		{gv: coordinationv1.SchemeGroupVersion, plural: "leases", singular: "lease", kind: "Lease", namespaced: true,
			newObj: func() runtime.Object { return &coordinationv1.Lease{} }, newList: func() runtime.Object { return &coordinationv1.LeaseList{} },
			validName: dnsSubdomain},
		{gv: policyv1.SchemeGroupVersion, plural: "poddisruptionbudgets", singular: "poddisruptionbudget", kind: "PodDisruptionBudget", namespaced: true, status: true, shortNames: []string{"pdb"},
			newObj: func() runtime.Object { return &policyv1.PodDisruptionBudget{} }, newList: func() runtime.Object { return &policyv1.PodDisruptionBudgetList{} },
			validName: dnsSubdomain},
	}
}

// storeWithNames adds kubectl's short names and categories to the generic store.
type storeWithNames struct {
	*genericregistry.Store
	shortNames []string
	categories []string
}

func (s *storeWithNames) ShortNames() []string { return s.shortNames }
func (s *storeWithNames) Categories() []string { return s.categories }

// statusREST serves <resource>/status with the status strategy, as kube-apiserver's StatusREST.
type statusREST struct{ store *genericregistry.Store }

func (r *statusREST) New() runtime.Object { return r.store.New() }
func (r *statusREST) Destroy()            {}
func (r *statusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}
func (r *statusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}
func (r *statusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}

type installed struct {
	byResource map[schema.GroupResource]*genericregistry.Store
}

func (i *installed) store(gr schema.GroupResource) *genericregistry.Store { return i.byResource[gr] }

// clearTypeMeta: objects read back from etcd keep the kind and apiVersion they were stored with;
// kube-apiserver's conversion to its internal version drops them, so list items go out without.
func clearTypeMeta(obj runtime.Object) {
	if meta.IsListType(obj) {
		_ = meta.EachListItem(obj, func(item runtime.Object) error {
			item.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{})
			return nil
		})
		return
	}
	obj.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{})
}

func newStore(r *resource, getter generic.RESTOptionsGetter) (*genericregistry.Store, *genericregistry.Store, error) {
	s := &strategy{ObjectTyper: Scheme, r: r}
	gr := r.gv.WithResource(r.plural).GroupResource()
	store := &genericregistry.Store{
		NewFunc:                   r.newObj,
		NewListFunc:               r.newList,
		DefaultQualifiedResource:  gr,
		SingularQualifiedResource: r.gv.WithResource(r.singular).GroupResource(),
		CreateStrategy:            s,
		UpdateStrategy:            s,
		DeleteStrategy:            s,
		ResetFieldsStrategy:       s,
		ReturnDeletedObject:       r.returnDeleted,
		TableConvertor:            rest.NewDefaultTableConvertor(gr),
		Decorator:                 clearTypeMeta,
		PredicateFunc: func(label labels.Selector, field fields.Selector) storage.SelectionPredicate {
			return storage.SelectionPredicate{Label: label, Field: field, GetAttrs: s.attrs}
		},
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: getter, AttrFunc: s.attrs}); err != nil {
		return nil, nil, fmt.Errorf("storage for %s: %w", gr, err)
	}
	if !r.status {
		return store, nil, nil
	}
	statusStore := *store
	ss := &strategy{ObjectTyper: Scheme, r: r, statusOnly: true}
	statusStore.UpdateStrategy = ss
	statusStore.ResetFieldsStrategy = ss
	return store, &statusStore, nil
}

func installAPIs(server *genericapiserver.GenericAPIServer, getter generic.RESTOptionsGetter, tokens *tokenSource, authz authorizer.Authorizer) (*installed, error) {
	done := &installed{byResource: map[schema.GroupResource]*genericregistry.Store{}}
	groups := map[string]*genericapiserver.APIGroupInfo{}
	var order []string
	group := func(gv schema.GroupVersion) map[string]rest.Storage {
		info, ok := groups[gv.Group]
		if !ok {
			i := genericapiserver.NewDefaultAPIGroupInfo(gv.Group, Scheme, ParameterCodec, Codecs)
			i.PrioritizedVersions = []schema.GroupVersion{gv}
			i.VersionedResourcesStorageMap[gv.Version] = map[string]rest.Storage{}
			info = &i
			groups[gv.Group] = info
			order = append(order, gv.Group)
		}
		return info.VersionedResourcesStorageMap[gv.Version]
	}
	for _, r := range resources() {
		store, statusStore, err := newStore(r, getter)
		if err != nil {
			return nil, err
		}
		done.byResource[r.gv.WithResource(r.plural).GroupResource()] = store
		m := group(r.gv)
		m[r.plural] = &storeWithNames{Store: store, shortNames: r.shortNames, categories: r.categories}
		if statusStore != nil {
			m[r.plural+"/status"] = &statusREST{store: statusStore}
		}
	}
	group(corev1.SchemeGroupVersion)["serviceaccounts/token"] = &tokenRequestREST{tokens: tokens}
	group(authenticationv1.SchemeGroupVersion)["tokenreviews"] = &tokenReviewREST{tokens: tokens}
	group(authorizationv1.SchemeGroupVersion)["subjectaccessreviews"] = &accessReviewREST{authz: authz}
	group(authorizationv1.SchemeGroupVersion)["selfsubjectaccessreviews"] = &accessReviewREST{authz: authz, self: true}

	for _, name := range order {
		info := groups[name]
		var err error
		if name == "" {
			err = server.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, info)
		} else {
			err = server.InstallAPIGroup(info)
		}
		if err != nil {
			return nil, fmt.Errorf("installing API group %q: %w", name, err)
		}
	}
	return done, nil
}
