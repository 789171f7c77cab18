Feature: Bad input
  A body is a JSON object sent as application/json, at most 1 MiB. Whatever goes
  wrong, the answer is JSON: {"error": {"code": <status>, "message": <text>}}.

  Scenario: A body that is not declared as JSON is refused
    When I PUT /api/v0/network/$net with the content type "text/plain" and:
      """
      {"type": "flannel_etcd"}
      """
    Then the response status is 415
    And the error message mentions "application/json"
    And GET /api/v0/network/$net answers 404

  Scenario: A body without a content type is refused
    When I PUT /api/v0/network/$net without a content type and:
      """
      {"type": "flannel_etcd"}
      """
    Then the response status is 415
    And GET /api/v0/network/$net answers 404

  Scenario: JSON with a charset parameter is accepted
    When I PUT /api/v0/network/$net with the content type "application/json; charset=utf-8" and:
      """
      {"type": "flannel_etcd"}
      """
    Then the response status is 201

  Scenario: Malformed JSON is refused
    When I PUT /api/v0/network/$net with:
      """
      {"type": "flannel_etcd",
      """
    Then the response status is 400
    And the error message mentions "JSON"
    And GET /api/v0/network/$net answers 404

  Scenario: A body that is JSON but not an object is refused
    When I PUT /api/v0/cluster/$cluster with:
      """
      ["default"]
      """
    Then the response status is 400
    And the error message mentions "object"
    And GET /api/v0/cluster/$cluster answers 404

  Scenario: A body of exactly 1 MiB is read
    When I PUT /api/v0/network/$net with a JSON body of 1048576 bytes
    Then the response status is 201
    And the response field "/type" is "flannel_etcd"

  Scenario: A body larger than 1 MiB is refused
    When I PUT /api/v0/network/$net with a JSON body of 1048577 bytes
    Then the response status is 413
    And GET /api/v0/network/$net answers 404

  Scenario: A body larger than 1 MiB sent in chunks is refused
    When I PUT /api/v0/network/$net with a JSON body of 1200000 bytes sent in chunks
    Then the response status is 413
    And GET /api/v0/network/$net answers 404

  Scenario Outline: Every error is a JSON object with its code and a message
    Given I am "<user>"
    When I <method> <path>
    Then the response is an error with code <status>

    Examples:
      | user   | method | path                          | status |
      | admin  | GET    | /api/v0/host/$nothing         | 404    |
      | admin  | GET    | /api/v0/nothing               | 404    |
      | admin  | POST   | /api/v0/clusters              | 405    |
      | viewer | PUT    | /api/v0/cluster/$cluster      | 403    |
      | viewer | GET    | /api/v0/host/$nothing/creds   | 403    |
      | admin  | PUT    | /api/v0/cluster/$c/deploy     | 400    |
      | admin  | DELETE | /api/v0/containermanager/$cm  | 404    |
