// Swagger UI over /openapi.json. Every request it makes (the document, and "Try it out") carries the token
// the page keeps for this tab, if there is one; when the document needs one, a bar asks for it.
const TOKEN_KEY = "imageapi.token";

function start() {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    deepLinking: true,
    validatorUrl: null, // Swagger UI would otherwise send the document to a validator on the web
    requestInterceptor: (request) => {
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) request.headers.Authorization = `Bearer ${token}`;
      return request;
    },
    responseInterceptor: (response) => {
      if (response.url.endsWith("/openapi.json") && response.status === 401) {
        document.getElementById("token-bar").hidden = false;
      }
      return response;
    },
  });
}

document.getElementById("token-bar").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("token-bar").hidden = true;
  start();
});

start();
