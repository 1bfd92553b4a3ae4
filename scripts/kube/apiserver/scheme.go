package main

import (
	"reflect"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// Scheme holds the built-in kinds served here. kube-apiserver converts every request to an
// internal version kept in k8s.io/kubernetes, which Debian does not package; here each external
// v1 type is also registered as its group's internal version, so the generic handlers'
// "convert to internal" is the identity and etcd holds the v1 JSON.
var (
	Scheme         = runtime.NewScheme()
	Codecs         = serializer.NewCodecFactory(Scheme)
	ParameterCodec = runtime.NewParameterCodec(Scheme)
)

var groupInstallers = []func(*runtime.Scheme) error{
	corev1.AddToScheme,
	appsv1.AddToScheme,
	discoveryv1.AddToScheme,
	rbacv1.AddToScheme,
	authenticationv1.AddToScheme,
	authorizationv1.AddToScheme,
	coordinationv1.AddToScheme,
	policyv1.AddToScheme,
}

func externalVersions() []schema.GroupVersion {
	return []schema.GroupVersion{
		corev1.SchemeGroupVersion, appsv1.SchemeGroupVersion, discoveryv1.SchemeGroupVersion,
		rbacv1.SchemeGroupVersion, authenticationv1.SchemeGroupVersion, authorizationv1.SchemeGroupVersion,
		coordinationv1.SchemeGroupVersion, policyv1.SchemeGroupVersion,
	}
}

func init() {
	for _, install := range groupInstallers {
		external := runtime.NewScheme()
		if err := install(external); err != nil {
			panic(err)
		}
		for gvk, t := range external.AllKnownTypes() {
			if _, isOptions := optionKinds[gvk.Kind]; isOptions {
				continue
			}
			obj := reflect.New(t).Interface().(runtime.Object)
			Scheme.AddKnownTypeWithName(gvk, obj)
			internal := gvk.GroupVersion().WithKind(gvk.Kind)
			internal.Version = runtime.APIVersionInternal
			Scheme.AddKnownTypeWithName(internal, reflect.New(t).Interface().(runtime.Object))
		}
	}
	for _, gv := range externalVersions() {
		metav1.AddToGroupVersion(Scheme, gv)
	}
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	Scheme.AddUnversionedTypes(unversioned,
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
	if err := addFieldSelectors(Scheme); err != nil {
		panic(err)
	}
}

// optionKinds are registered by metav1.AddToGroupVersion; the k8s.io/api packages register some
// of them again (core/v1 ListOptions and friends), and doing it twice under internal panics.
var optionKinds = map[string]struct{}{
	"ListOptions": {}, "GetOptions": {}, "DeleteOptions": {}, "CreateOptions": {},
	"UpdateOptions": {}, "PatchOptions": {}, "WatchEvent": {}, "Status": {},
	"APIVersions": {}, "APIGroupList": {}, "APIGroup": {}, "APIResourceList": {},
	"ExportOptions": {}, "TableOptions": {}, "Table": {}, "PartialObjectMetadata": {},
	"PartialObjectMetadataList": {},
}
