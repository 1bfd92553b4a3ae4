package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsapiserver "k8s.io/apiextensions-apiserver/pkg/apiserver"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/kube-openapi/pkg/spec3"
)

// ensureSystemNamespaces creates what kube-apiserver's system-namespaces controller does, and
// resumes cluster-IP allocation after the highest address in use.
func ensureSystemNamespaces(ctx context.Context, client kubernetes.Interface) error {
	for _, name := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic, corev1.NamespaceNodeLease} {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	services, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, s := range services.Items {
		clusterIPs.seen(s.Spec.ClusterIP)
	}
	return nil
}

// runNamespaceCleanup plays two small parts of kube-controller-manager that tests should not
// have to: a namespace gets a "default" ServiceAccount, and a deleted namespace's objects
// (built-in and custom) are deleted after it. Unlike a real cluster the namespace itself goes
// at once, without a Terminating phase.
func runNamespaceCleanup(ctx context.Context, factory informers.SharedInformerFactory, client kubernetes.Interface, dyn dynamic.Interface) {
	informer := factory.Core().V1().Namespaces().Informer()
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj interface{}) {
			ns := obj.(*corev1.Namespace)
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns.Name}}
			_, err := client.CoreV1().ServiceAccounts(ns.Name).Create(ctx, sa, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) && !apierrors.IsNotFound(err) && !apierrors.IsForbidden(err) {
				klog.ErrorS(err, "creating the default service account", "namespace", ns.Name)
			}
		},
		DeleteFunc: func(obj interface{}) {
			ns, ok := obj.(*corev1.Namespace)
			if !ok {
				tomb, ok := obj.(cache.DeletedFinalStateUnknown)
				if !ok {
					return
				}
				if ns, ok = tomb.Obj.(*corev1.Namespace); !ok {
					return
				}
			}
			go deleteNamespaceContents(ctx, client, dyn, ns.Name)
		},
	})
	if err != nil {
		klog.ErrorS(err, "namespace informer")
	}
	factory.Start(ctx.Done())
}

func deleteNamespaceContents(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, namespace string) {
	lists, err := client.Discovery().ServerPreferredNamespacedResources()
	if err != nil {
		klog.ErrorS(err, "discovery for namespace cleanup (continuing with what was found)", "namespace", namespace)
	}
	for _, list := range lists {
		gv, err := schema.ParseGroupVersion(list.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range list.APIResources {
			if strings.Contains(r.Name, "/") || !contains(r.Verbs, "deletecollection") {
				continue
			}
			err := dyn.Resource(gv.WithResource(r.Name)).Namespace(namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				klog.ErrorS(err, "deleting a namespace's objects", "namespace", namespace, "resource", r.Name)
			}
		}
	}
}

// addCRDGroupsToDiscovery lists CRD groups in /apis (the unaggregated discovery document),
// which kube-apiserver's aggregator does in a real cluster.
func addCRDGroupsToDiscovery(server *genericapiserver.GenericAPIServer, crds *apiextensionsapiserver.CustomResourceDefinitions) {
	informer := crds.Informers.Apiextensions().V1().CustomResourceDefinitions()
	lister := informer.Lister()
	known := map[string]bool{}
	sync := func(obj interface{}) {
		all, err := lister.List(labels.Everything())
		if err != nil {
			return
		}
		groups := map[string]map[string]bool{}
		for _, crd := range all {
			if !established(crd) {
				continue
			}
			if groups[crd.Spec.Group] == nil {
				groups[crd.Spec.Group] = map[string]bool{}
			}
			for _, v := range crd.Spec.Versions {
				if v.Served {
					groups[crd.Spec.Group][v.Name] = true
				}
			}
		}
		for name, versions := range groups {
			var names []string
			for v := range versions {
				names = append(names, v)
			}
			if len(names) == 0 {
				continue
			}
			sort.Slice(names, func(i, j int) bool { return version.CompareKubeAwareVersionStrings(names[i], names[j]) > 0 })
			group := metav1.APIGroup{Name: name}
			for _, v := range names {
				group.Versions = append(group.Versions, metav1.GroupVersionForDiscovery{GroupVersion: name + "/" + v, Version: v})
			}
			group.PreferredVersion = group.Versions[0]
			server.DiscoveryGroupManager.AddGroup(group)
			known[name] = true
		}
		for name := range known {
			if _, ok := groups[name]; !ok {
				server.DiscoveryGroupManager.RemoveGroup(name)
				delete(known, name)
			}
		}
	}
	_, _ = informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    sync,
		UpdateFunc: func(_, obj interface{}) { sync(obj) },
		DeleteFunc: sync,
	})
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

// shareOpenAPI makes /openapi/v2 and /openapi/v3 (served by the outer server) include the CRD
// server's: its apiextensions.k8s.io group and every CRD's schema, which the CRD server's
// OpenAPI controllers publish into whichever service they are given when they start.
func shareOpenAPI(server, crdServer *genericapiserver.GenericAPIServer) {
	if crdServer.OpenAPIV3VersionedService != nil && server.OpenAPIV3VersionedService != nil {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/openapi/v3/apis/apiextensions.k8s.io/v1", nil)
		req.Header.Set("Accept", "application/json")
		crdServer.OpenAPIV3VersionedService.HandleGroupVersion(rec, req)
		var doc spec3.OpenAPI
		if rec.Code == http.StatusOK && json.Unmarshal(rec.Body.Bytes(), &doc) == nil {
			server.OpenAPIV3VersionedService.UpdateGroupVersion("apis/apiextensions.k8s.io/v1", &doc)
		} else {
			klog.Warningf("apiextensions.k8s.io/v1 is missing from /openapi/v3 (HTTP %d)", rec.Code)
		}
		crdServer.OpenAPIV3VersionedService = server.OpenAPIV3VersionedService
	}
	if server.OpenAPIVersionedService != nil && server.StaticOpenAPISpec != nil {
		crdServer.OpenAPIVersionedService = server.OpenAPIVersionedService
		crdServer.StaticOpenAPISpec = server.StaticOpenAPISpec
	}
}

// discoveryWithSlash answers /api/ and /apis/ as /api and /apis (kube-apiserver's aggregator
// does; the Python client asks for /apis/).
func discoveryWithSlash(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/" || r.URL.Path == "/apis/" {
			r = r.Clone(r.Context())
			r.URL.Path = strings.TrimSuffix(r.URL.Path, "/")
		}
		h.ServeHTTP(w, r)
	})
}
