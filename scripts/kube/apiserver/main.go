// weft-kube-apiserver: a Kubernetes API server for weft's tests, built only from Debian's packaged
// k8s.io libraries. Kubernetes' own generic apiserver (handlers, etcd3 storage, watch cache,
// bookmarks, paging, 410 Gone, strict decoding, server-side apply) serves the built-in kinds weft
// reads and writes; apiextensions-apiserver, chained behind it, serves CRDs. There are no
// controllers: tests play kubelet and the controller manager. docs/kubernetes-test-apiserver.md
// lists every difference from a real cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsv1beta1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1"
	apiextensionsapiserver "k8s.io/apiextensions-apiserver/pkg/apiserver"
	apiextensionsoptions "k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	apiextensionsopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authorizerunion "k8s.io/apiserver/pkg/authorization/union"
	discoveryendpoint "k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/util/compatibility"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	netutils "k8s.io/utils/net"

	"weft-kube-apiserver/openapi"

	noopoteltrace "go.opentelemetry.io/otel/trace/noop"
)

type flags struct {
	etcd       string
	port       int
	dataDir    string
	adminToken string
	issuer     string
	watchCache bool
	authz      string
	bind       string
}

func main() {
	var f flags
	klog.InitFlags(nil)
	flag.StringVar(&f.etcd, "etcd-servers", "http://127.0.0.1:2379", "etcd client URL")
	flag.IntVar(&f.port, "secure-port", 6443, "HTTPS port")
	flag.StringVar(&f.bind, "bind-address", "127.0.0.1", "address to serve on (the serving certificate names it, 127.0.0.1 and localhost)")
	flag.StringVar(&f.dataDir, "data-dir", "", "directory for the serving certificate, the service-account signing key and the token file (required)")
	flag.StringVar(&f.adminToken, "token-auth-file", "", "static tokens, kube-apiserver's CSV format (default <data-dir>/tokens.csv)")
	flag.StringVar(&f.issuer, "service-account-issuer", "https://kubernetes.default.svc.cluster.local", "issuer and default audience of service-account tokens")
	flag.BoolVar(&f.watchCache, "watch-cache", true, "serve watches and lists from the watch cache, as kube-apiserver does by default")
	flag.StringVar(&f.authz, "authorization-mode", "AlwaysAllow", "AlwaysAllow (every authenticated user may do everything) or RBAC (the stored roles and bindings are evaluated)")
	flag.Parse()
	if f.dataDir == "" {
		fmt.Fprintln(os.Stderr, "weft-kube-apiserver: --data-dir is required")
		os.Exit(2)
	}
	if f.adminToken == "" {
		f.adminToken = filepath.Join(f.dataDir, "tokens.csv")
	}
	ctx := genericapiserver.SetupSignalContext()
	if err := run(ctx, f); err != nil {
		fmt.Fprintf(os.Stderr, "weft-kube-apiserver: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags) error {
	secureServing := genericoptions.NewSecureServingOptions().WithLoopback()
	bindIP := netutils.ParseIPSloppy(f.bind)
	if bindIP == nil {
		return fmt.Errorf("--bind-address=%q is not an IP address", f.bind)
	}
	secureServing.BindAddress = bindIP
	secureServing.BindPort = f.port
	secureServing.ServerCert.CertDirectory = f.dataDir
	secureServing.ServerCert.PairName = "apiserver"
	if err := secureServing.MaybeDefaultWithSelfSignedCerts("localhost", []string{"kubernetes.default.svc"}, []net.IP{netutils.ParseIPSloppy("127.0.0.1"), bindIP}); err != nil {
		return fmt.Errorf("self-signed serving certificate in %s: %w", f.dataDir, err)
	}

	coreConfig := genericapiserver.NewRecommendedConfig(Codecs)
	coreConfig.EffectiveVersion = compatibility.DefaultBuildEffectiveVersion()
	if err := secureServing.ApplyTo(&coreConfig.SecureServing, &coreConfig.LoopbackClientConfig); err != nil {
		return fmt.Errorf("serving on %s:%d: %w", f.bind, f.port, err)
	}
	etcdOptions := genericoptions.NewEtcdOptions(storagebackend.NewDefaultConfig("/registry", Codecs.LegacyCodec(externalVersions()...)))
	etcdOptions.StorageConfig.Transport.ServerList = []string{f.etcd}
	etcdOptions.EnableWatchCache = f.watchCache
	if err := etcdOptions.ApplyTo(&coreConfig.Config); err != nil {
		return fmt.Errorf("etcd at %s: %w", f.etcd, err)
	}

	// One aggregated-discovery document for both servers, so CRD groups appear in /apis beside
	// the built-in ones (kube-apiserver gets this from its aggregator, which is not packaged).
	coreConfig.AggregatedDiscoveryGroupManager = discoveryendpoint.NewResourceManager("apis")

	signer, err := loadOrCreateSigner(filepath.Join(f.dataDir, "sa.key"), f.issuer)
	if err != nil {
		return err
	}
	tokens := &tokenSource{signer: signer, audiences: []string{f.issuer}}
	authn, err := newAuthenticator(f.adminToken, tokens)
	if err != nil {
		return err
	}
	coreConfig.Authentication.Authenticator = authn
	coreConfig.Authentication.APIAudiences = []string{f.issuer}

	namer := openapinamer.NewDefinitionNamer(Scheme)
	coreConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	coreConfig.OpenAPIConfig.Info.Title = "weft-kube-apiserver"
	coreConfig.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	coreConfig.OpenAPIV3Config.Info.Title = "weft-kube-apiserver"

	client, err := kubernetes.NewForConfig(coreConfig.LoopbackClientConfig)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(coreConfig.LoopbackClientConfig)
	if err != nil {
		return err
	}
	coreConfig.BuildHandlerChainFunc = func(h http.Handler, c *genericapiserver.Config) http.Handler {
		return genericapiserver.DefaultBuildHandlerChain(discoveryWithSlash(h), c)
	}
	coreConfig.SharedInformerFactory = informers.NewSharedInformerFactory(client, 10*time.Minute)
	var rbac *rbacAuthorizer
	switch f.authz {
	case "AlwaysAllow":
		coreConfig.Authorization.Authorizer = authenticatedAllowed{}
	case "RBAC":
		rbac = newRBACAuthorizer(coreConfig.SharedInformerFactory)
		// system:masters (the loopback client, the tests' admin) bypasses RBAC, as in kube-apiserver.
		coreConfig.Authorization.Authorizer = authorizerunion.New(authorizerfactory.NewPrivilegedGroups(user.SystemPrivilegedGroup), rbac)
	default:
		return fmt.Errorf("--authorization-mode=%s: AlwaysAllow or RBAC", f.authz)
	}
	// NamespaceLifecycle only: objects cannot be created in a namespace that does not exist.
	// Webhooks and admission policies are left out (their APIs are not served).
	admission := genericoptions.NewAdmissionOptions()
	admission.RecommendedPluginOrder = []string{lifecycle.PluginName}
	admission.DefaultOffPlugins = sets.Set[string]{}
	if err := admission.ApplyTo(&coreConfig.Config, coreConfig.SharedInformerFactory, client, dyn, coreConfig.FeatureGate, coreConfig.EffectiveVersion); err != nil {
		return fmt.Errorf("admission: %w", err)
	}

	// The CRD server: the same serving, authn and etcd, its own codecs and OpenAPI.
	crdGeneric := *coreConfig
	crdGeneric.PostStartHooks = map[string]genericapiserver.PostStartHookConfigEntry{}
	crdGeneric.HealthzChecks = nil
	crdGeneric.ReadyzChecks = nil
	crdGeneric.LivezChecks = nil
	crdGeneric.Serializer = apiextensionsapiserver.Codecs
	crdGeneric.MergedResourceConfig = apiextensionsapiserver.DefaultAPIResourceConfigSource()
	crdNamer := openapinamer.NewDefinitionNamer(apiextensionsapiserver.Scheme)
	crdGeneric.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(apiextensionsopenapi.GetOpenAPIDefinitions, crdNamer)
	crdGeneric.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(apiextensionsopenapi.GetOpenAPIDefinitions, crdNamer)
	crdEtcd := *etcdOptions
	crdEtcd.StorageConfig.Codec = apiextensionsapiserver.Codecs.LegacyCodec(apiextensionsv1beta1.SchemeGroupVersion, apiextensionsv1.SchemeGroupVersion)
	crdEtcd.SkipHealthEndpoints = true
	if err := crdEtcd.ApplyTo(&crdGeneric.Config); err != nil {
		return err
	}
	crdConfig := &apiextensionsapiserver.Config{
		GenericConfig: &crdGeneric,
		ExtraConfig: apiextensionsapiserver.ExtraConfig{
			CRDRESTOptionsGetter: apiextensionsoptions.NewCRDRESTOptionsGetter(*etcdOptions, nil, crdGeneric.StorageObjectCountTracker),
			MasterCount:          1,
			ServiceResolver:      noServiceResolver{},
			AuthResolverWrapper:  webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, coreConfig.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}
	crdServer, err := crdConfig.Complete().New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return fmt.Errorf("apiextensions-apiserver: %w", err)
	}

	server, err := coreConfig.Complete().New("weft-kube-apiserver", crdServer.GenericAPIServer)
	if err != nil {
		return err
	}
	stores, err := installAPIs(server, coreConfig.RESTOptionsGetter, tokens, coreConfig.Authorization.Authorizer)
	if err != nil {
		return err
	}
	tokens.stores = stores
	addCRDGroupsToDiscovery(server, crdServer)
	server.AddPostStartHookOrDie("weft-system-namespaces", func(hc genericapiserver.PostStartHookContext) error {
		return ensureSystemNamespaces(hc.Context, client)
	})
	server.AddPostStartHookOrDie("weft-namespace-cleanup", func(hc genericapiserver.PostStartHookContext) error {
		go runNamespaceCleanup(hc.Context, coreConfig.SharedInformerFactory, client, dyn)
		return nil
	})

	if rbac != nil {
		server.AddPostStartHookOrDie("weft-rbac-informers-synced", func(hc genericapiserver.PostStartHookContext) error {
			return rbac.waitForSync(hc.Context)
		})
	}
	prepared := server.PrepareRun()
	shareOpenAPI(server, crdServer.GenericAPIServer)
	return prepared.RunWithContext(ctx)
}

type noServiceResolver struct{}

func (noServiceResolver) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	return nil, fmt.Errorf("conversion webhooks are not supported by weft-kube-apiserver (service %s/%s)", namespace, name)
}
